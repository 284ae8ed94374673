;; Calls host functions with good and bad arguments and checks the statuses the spec
;; prescribes. The number of the first check that failed is kept in the exported global
;; "failed" (0: all passed); the test reads it. proxy_on_configure runs the root-context
;; checks, proxy_on_request_headers the stream-context ones.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_log_level" (func $get_log_level (param i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $buffer_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $register_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $record_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $get_metric (param i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue_stream (param i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call"
    (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_effective (param i32) (result i32)))
  (import "env" "proxy_done" (func $done (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $map_size (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes (param i32 i32) (result i32)))

  (memory (export "memory") 1)
  (global $failed (export "failed") (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 8192))

  ;; scratch: 0..63 return slots; strings from 256
  (data (i32.const 256) "k")            ;; shared data key
  (data (i32.const 260) "v1")
  (data (i32.const 264) "v2")
  (data (i32.const 272) "queue")
  (data (i32.const 280) "counter.c")
  (data (i32.const 296) "plugin_name")
  (data (i32.const 312) "request\00path")
  (data (i32.const 328) "x-h")
  (data (i32.const 336) "my\00prop")
  (data (i32.const 344) "val")
  (data (i32.const 352) "up")
  (data (i32.const 360) "x-h")
  (data (i32.const 368) ":path")
  (data (i32.const 376) "hello\n")
  (data (i32.const 384) "\00\00\00\00\06\00\00\00")   ;; iovec (filled in at 384: ptr, len)
  ;; a serialized map: {"x-a": "1", "x-b": "22"}
  (data (i32.const 400) "\02\00\00\00\03\00\00\00\01\00\00\00\03\00\00\00\02\00\00\00x-a\001\00x-b\0022\00")
  (data (i32.const 448) "\05\00\00\00\ff\ff")    ;; a truncated map

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))

  (func $expect (param $got i32) (param $want i32) (param $check i32)
    (if (i32.and (i32.ne (local.get $got) (local.get $want)) (i32.eqz (global.get $failed)))
      (then (global.set $failed (local.get $check)))))

  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (local $cas i32) (local $qid i32) (local $mid i32)
    ;; logging
    (call $expect (call $log (i32.const 2) (i32.const 0xFFFFFF00) (i32.const 1000)) (i32.const 6) (i32.const 1))
    (call $expect (call $log (i32.const 9) (i32.const 0) (i32.const 0)) (i32.const 2) (i32.const 2))
    (call $expect (call $get_log_level (i32.const 0)) (i32.const 0) (i32.const 3))
    ;; buffers: plugin configuration "cfg!" (4 bytes) is readable; bodies are not
    (call $expect (call $get_buffer (i32.const 7) (i32.const 0) (i32.const 100) (i32.const 8) (i32.const 12)) (i32.const 0) (i32.const 4))
    (call $expect (i32.load (i32.const 12)) (i32.const 4) (i32.const 5))
    (call $expect (i32.load8_u (i32.load (i32.const 8))) (i32.const 99) (i32.const 6)) ;; 'c'
    (call $expect (call $get_buffer (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 8) (i32.const 12)) (i32.const 1) (i32.const 7))
    (call $expect (call $get_buffer (i32.const 42) (i32.const 0) (i32.const 100) (i32.const 8) (i32.const 12)) (i32.const 2) (i32.const 8))
    (call $expect (call $get_buffer (i32.const 7) (i32.const 10) (i32.const 100) (i32.const 8) (i32.const 12)) (i32.const 2) (i32.const 9))
    (call $expect (call $buffer_status (i32.const 7) (i32.const 16) (i32.const 20)) (i32.const 0) (i32.const 10))
    (call $expect (i32.load (i32.const 16)) (i32.const 4) (i32.const 11))
    ;; shared data with CAS
    (call $expect (call $get_shared (i32.const 256) (i32.const 1) (i32.const 8) (i32.const 12) (i32.const 16)) (i32.const 1) (i32.const 12))
    (call $expect (call $set_shared (i32.const 256) (i32.const 1) (i32.const 260) (i32.const 2) (i32.const 0)) (i32.const 0) (i32.const 13))
    (call $expect (call $get_shared (i32.const 256) (i32.const 1) (i32.const 8) (i32.const 12) (i32.const 16)) (i32.const 0) (i32.const 14))
    (local.set $cas (i32.load (i32.const 16)))
    (call $expect (i32.eqz (local.get $cas)) (i32.const 0) (i32.const 15))
    (call $expect (call $set_shared (i32.const 256) (i32.const 1) (i32.const 264) (i32.const 2) (i32.add (local.get $cas) (i32.const 1))) (i32.const 8) (i32.const 16))
    (call $expect (call $set_shared (i32.const 256) (i32.const 1) (i32.const 264) (i32.const 2) (local.get $cas)) (i32.const 0) (i32.const 17))
    (call $expect (call $set_shared (i32.const 256) (i32.const 1) (i32.const 264) (i32.const 2) (local.get $cas)) (i32.const 8) (i32.const 18))
    ;; shared queues
    (call $expect (call $dequeue (i32.const 999999) (i32.const 8) (i32.const 12)) (i32.const 1) (i32.const 19))
    (call $expect (call $register_queue (i32.const 272) (i32.const 5) (i32.const 24)) (i32.const 0) (i32.const 20))
    (local.set $qid (i32.load (i32.const 24)))
    (call $expect (call $dequeue (local.get $qid) (i32.const 8) (i32.const 12)) (i32.const 7) (i32.const 21))
    (call $expect (call $enqueue (local.get $qid) (i32.const 260) (i32.const 2)) (i32.const 0) (i32.const 22))
    (call $expect (call $dequeue (local.get $qid) (i32.const 8) (i32.const 12)) (i32.const 0) (i32.const 23))
    (call $expect (i32.load (i32.const 12)) (i32.const 2) (i32.const 24))
    ;; metrics
    (call $expect (call $define_metric (i32.const 7) (i32.const 280) (i32.const 9) (i32.const 28)) (i32.const 2) (i32.const 25))
    (call $expect (call $define_metric (i32.const 0) (i32.const 280) (i32.const 9) (i32.const 28)) (i32.const 0) (i32.const 26))
    (local.set $mid (i32.load (i32.const 28)))
    (call $expect (call $increment_metric (local.get $mid) (i64.const -1)) (i32.const 2) (i32.const 27))
    (call $expect (call $increment_metric (local.get $mid) (i64.const 5)) (i32.const 0) (i32.const 28))
    (call $expect (call $get_metric (local.get $mid) (i32.const 32)) (i32.const 0) (i32.const 29))
    (call $expect (i32.wrap_i64 (i64.load (i32.const 32))) (i32.const 5) (i32.const 30))
    (call $expect (call $get_metric (i32.const 999999) (i32.const 32)) (i32.const 1) (i32.const 31))
    ;; properties: plugin_name in the root context; request.* only in a stream
    (call $expect (call $get_property (i32.const 296) (i32.const 11) (i32.const 8) (i32.const 12)) (i32.const 0) (i32.const 32))
    (call $expect (i32.load (i32.const 12)) (i32.const 6) (i32.const 33)) ;; "checks"
    (call $expect (call $get_property (i32.const 312) (i32.const 12) (i32.const 8) (i32.const 12)) (i32.const 1) (i32.const 34))
    ;; stream operations outside a stream
    (call $expect (call $continue_stream (i32.const 0)) (i32.const 1) (i32.const 35))
    (call $expect (call $continue_stream (i32.const 9)) (i32.const 2) (i32.const 36))
    (call $expect (call $continue_stream (i32.const 2)) (i32.const 12) (i32.const 37))
    (call $expect (call $local_response (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)) (i32.const 1) (i32.const 38))
    ;; a callout without :method and :path is a bad argument
    (call $expect (call $http_call (i32.const 352) (i32.const 2) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 8)) (i32.const 2) (i32.const 39))
    (call $expect (call $set_effective (i32.const 12345)) (i32.const 2) (i32.const 40))
    (call $expect (call $done) (i32.const 1) (i32.const 41))
    (call $expect (call $get_header (i32.const 0) (i32.const 328) (i32.const 3) (i32.const 8) (i32.const 12)) (i32.const 1) (i32.const 42))
    (call $expect (call $get_header (i32.const 99) (i32.const 328) (i32.const 3) (i32.const 8) (i32.const 12)) (i32.const 2) (i32.const 43))
    ;; WASI
    (call $expect (call $environ_sizes (i32.const 40) (i32.const 44)) (i32.const 0) (i32.const 44))
    (call $expect (i32.load (i32.const 40)) (i32.const 2) (i32.const 45))
    (call $expect (i32.load (i32.const 44)) (i32.const 10) (i32.const 46))  ;; "A=1\0" "BB=22\0"
    (call $expect (call $environ_get (i32.const 1024) (i32.const 2048)) (i32.const 0) (i32.const 47))
    (call $expect (i32.load (i32.const 1024)) (i32.const 2048) (i32.const 48))
    (call $expect (i32.load8_u (i32.const 2048)) (i32.const 65) (i32.const 49)) ;; 'A'
    (i32.store (i32.const 384) (i32.const 376))
    (call $expect (call $fd_write (i32.const 3) (i32.const 384) (i32.const 1) (i32.const 48)) (i32.const 8) (i32.const 50))
    (call $expect (call $fd_write (i32.const 1) (i32.const 384) (i32.const 1) (i32.const 48)) (i32.const 0) (i32.const 51))
    (call $expect (i32.load (i32.const 48)) (i32.const 6) (i32.const 52))
    (call $expect (call $fd_write (i32.const 1) (i32.const 0xFFFFFFF0) (i32.const 1) (i32.const 48)) (i32.const 21) (i32.const 53))
    (call $expect (call $clock (i32.const 0) (i64.const 0) (i32.const 56)) (i32.const 0) (i32.const 54))
    (call $expect (i64.gt_u (i64.load (i32.const 56)) (i64.const 1600000000000000000)) (i32.const 1) (i32.const 55))
    (call $expect (call $clock (i32.const 7) (i64.const 0) (i32.const 56)) (i32.const 58) (i32.const 56))
    (call $expect (call $random (i32.const 3000) (i32.const 16)) (i32.const 0) (i32.const 57))
    (call $expect (call $args_sizes (i32.const 40) (i32.const 44)) (i32.const 0) (i32.const 58))
    (call $expect (i32.load (i32.const 40)) (i32.const 0) (i32.const 59))
    i32.const 1)

  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (global.set $heap (i32.const 8192))
    (call $expect (call $get_property (i32.const 312) (i32.const 12) (i32.const 8) (i32.const 12)) (i32.const 0) (i32.const 101))
    (call $expect (i32.load (i32.const 12)) (i32.const 5) (i32.const 102))  ;; "/p?q1"
    (call $expect (call $get_header (i32.const 0) (i32.const 368) (i32.const 5) (i32.const 8) (i32.const 12)) (i32.const 0) (i32.const 103))
    (call $expect (call $set_property (i32.const 336) (i32.const 7) (i32.const 344) (i32.const 3)) (i32.const 0) (i32.const 104))
    (call $expect (call $get_property (i32.const 336) (i32.const 7) (i32.const 8) (i32.const 12)) (i32.const 0) (i32.const 105))
    (call $expect (i32.load (i32.const 12)) (i32.const 3) (i32.const 106))
    ;; replace all headers from a serialized map; a malformed map is refused
    (call $expect (call $set_pairs (i32.const 0) (i32.const 400) (i32.const 33)) (i32.const 0) (i32.const 107))
    (call $expect (call $set_pairs (i32.const 0) (i32.const 448) (i32.const 6)) (i32.const 2) (i32.const 108))
    (call $expect (call $map_size (i32.const 2) (i32.const 16)) (i32.const 0) (i32.const 109))
    (call $expect (call $get_pairs (i32.const 0) (i32.const 8) (i32.const 12)) (i32.const 0) (i32.const 110))
    (call $expect (call $set_effective (local.get $ctx)) (i32.const 0) (i32.const 111))
    (call $expect (call $done) (i32.const 1) (i32.const 112))
    i32.const 1)  ;; Pause
)
