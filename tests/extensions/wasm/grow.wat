;; Grows its memory by 1 MiB per request and never gives it back; when memory.grow fails
;; (the host's memory limit) it aborts, as an SDK's allocator does.
(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1))
      (then unreachable))
    i32.const 0))
