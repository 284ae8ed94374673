;; Pauses every request and never resumes it; its first tick traps. The host must not leave
;; the paused streams waiting: the failure policy applies to them when the VM fails.
(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $tick (i32.const 50)))
    i32.const 1)
  (func (export "proxy_on_tick") (param i32) unreachable)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 1))
