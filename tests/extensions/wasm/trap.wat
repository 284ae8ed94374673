;; Traps (unreachable) when the request has an x-trap header; otherwise adds
;; "x-trap-filter: ok" to the request.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 16) "x-trap")
  (data (i32.const 32) "x-trap-filter")
  (data (i32.const 48) "ok")
  (func (export "proxy_abi_version_0_2_1"))
  ;; A bump allocator that starts over for every request (the plugin keeps nothing).
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (global.set $heap (i32.const 4096))
    ;; value pointer at 0, size at 4
    (if (i32.eqz (call $get (i32.const 0) (i32.const 16) (i32.const 6) (i32.const 0) (i32.const 4)))
      (then unreachable))
    (drop (call $add (i32.const 0) (i32.const 32) (i32.const 13) (i32.const 48) (i32.const 2)))
    i32.const 0))
