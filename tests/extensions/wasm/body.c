/* Buffers the whole request body (Pause until end of stream), rejects bodies containing
 * "forbidden" with a local 400, rewrites "foo" to "bar" otherwise; counts response bytes. */
#include "proxy_wasm.h"

static uint32_t m_resp_bytes, m_calls;

EXPORT(proxy_on_vm_start) int on_vm_start(uint32_t root, size_t size) {
  m_resp_bytes = define_metric(COUNTER, "wasm_body.response_bytes");
  m_calls = define_metric(COUNTER, "wasm_body.request_body_calls");
  return 1;
}

EXPORT(proxy_on_request_body) int on_request_body(uint32_t ctx, size_t size, int eos) {
  proxy_increment_metric(m_calls, 1);
  if (!eos) return PAUSE;
  char *body = NULL;
  size_t n = 0;
  if (size == 0) return CONTINUE;
  if (proxy_get_buffer_bytes(REQUEST_BODY, 0, size, &body, &n) != OK) return CONTINUE;
  for (size_t i = 0; i + 9 <= n; i++) {
    if (memcmp(body + i, "forbidden", 9) == 0) {
      const char *msg = "body rejected by wasm\n";
      proxy_send_local_response(400, "wasm_body_rejected", 18, msg, strlen(msg), NULL, 0, -1);
      free(body);
      return PAUSE;
    }
  }
  int changed = 0;
  for (size_t i = 0; i + 3 <= n; i++) {
    if (memcmp(body + i, "foo", 3) == 0) {
      memcpy(body + i, "bar", 3);
      changed = 1;
    }
  }
  if (changed) proxy_set_buffer_bytes(REQUEST_BODY, 0, n, body, n);
  /* append a marker so the origin can see the body went through the plugin */
  proxy_set_buffer_bytes(REQUEST_BODY, (size_t)-1, 0, "|wasm", 5);
  free(body);
  return CONTINUE;
}

EXPORT(proxy_on_response_body) int on_response_body(uint32_t ctx, size_t size, int eos) {
  proxy_increment_metric(m_resp_bytes, size);
  return CONTINUE;
}
