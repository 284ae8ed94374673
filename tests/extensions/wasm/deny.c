/* Answers 403 itself unless the request carries the API key from the configuration. */
#include "proxy_wasm.h"

static char key[128];
static size_t key_len;

EXPORT(proxy_on_configure) int on_configure(uint32_t root, size_t size) {
  char *data = NULL;
  size_t n = 0;
  if (size == 0 || size >= sizeof key) return 0; /* a key is required */
  if (proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, &data, &n) != OK) return 0;
  memcpy(key, data, n);
  key_len = n;
  free(data);
  return 1;
}

EXPORT(proxy_on_request_headers) int on_request_headers(uint32_t ctx, size_t n, int eos) {
  char *v = get_header(REQUEST_HEADERS, "x-api-key");
  int ok = v && strlen(v) == key_len && memcmp(v, key, key_len) == 0;
  free(v);
  if (ok) return CONTINUE;
  char hdrs[64];
  size_t hl = one_header_map(hdrs, "x-denied-by", "deny.c");
  const char *body = "denied by wasm\n";
  proxy_send_local_response(403, "wasm_denied", 11, body, strlen(body), hdrs, hl, -1);
  return PAUSE;
}
