;; The Wasm filter of the omnirelay-wasm peer: adds "x-bench: 1" to every request.
(module
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 32) "x-bench")
  (data (i32.const 48) "1")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 32) (i32.const 7) (i32.const 48) (i32.const 1)))
    i32.const 0))
