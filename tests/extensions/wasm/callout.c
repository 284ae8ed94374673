/* External authorization by HTTP callout: each request pauses while the plugin asks the
 * cluster named in its configuration (GET /check, with the caller's x-user); a 200 lets the
 * request through with the answer's body as x-authz, anything else is a 403, and a failed
 * call (no response) a 503. */
#include "proxy_wasm.h"

static char cluster[64];
static size_t cluster_len;

EXPORT(proxy_on_configure) int on_configure(uint32_t root, size_t size) {
  char *data = NULL;
  size_t n = 0;
  if (size == 0 || size >= sizeof cluster) return 0;
  if (proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, &data, &n) != OK) return 0;
  memcpy(cluster, data, n);
  cluster_len = n;
  free(data);
  return 1;
}

/* Append one (name, value) to a serialized map being built in `buf` (count patched later). */
static size_t put(char *buf, size_t at, uint32_t index, const char *k, const char *v) {
  uint32_t kl = strlen(k), vl = strlen(v);
  memcpy(buf + 4 + index * 8, &kl, 4);
  memcpy(buf + 8 + index * 8, &vl, 4);
  memcpy(buf + at, k, kl + 1);
  memcpy(buf + at + kl + 1, v, vl + 1);
  return at + kl + vl + 2;
}

EXPORT(proxy_on_request_headers) int on_request_headers(uint32_t ctx, size_t n, int eos) {
  char *user = get_header(REQUEST_HEADERS, "x-user");
  char map[512];
  uint32_t count = 4;
  memcpy(map, &count, 4);
  size_t at = 4 + count * 8;
  at = put(map, at, 0, ":method", "GET");
  at = put(map, at, 1, ":path", "/check");
  at = put(map, at, 2, ":authority", "authz.internal");
  at = put(map, at, 3, "x-user", user ? user : "");
  free(user);
  uint32_t token = 0;
  if (proxy_http_call(cluster, cluster_len, map, at, NULL, 0, NULL, 0, 2000, &token) != OK) {
    proxy_send_local_response(500, "callout_refused", 15, "callout refused\n", 16, NULL, 0, -1);
    return PAUSE;
  }
  return PAUSE;
}

EXPORT(proxy_on_http_call_response) void on_http_call_response(uint32_t ctx, uint32_t token,
                                                               uint32_t headers, size_t body_size,
                                                               uint32_t trailers) {
  if (headers == 0) {
    proxy_send_local_response(503, "authz_unavailable", 17, "authz unavailable\n", 18, NULL, 0,
                              -1);
    return;
  }
  char *status = get_header(HTTP_CALL_RESPONSE_HEADERS, ":status");
  char *verdict = get_header(HTTP_CALL_RESPONSE_HEADERS, "x-verdict");
  int ok = status && strcmp(status, "200") == 0;
  /* The response maps are read-only. */
  int ro = add_header(HTTP_CALL_RESPONSE_HEADERS, "x-nope", "1") == BAD_ARGUMENT;
  free(status);
  if (ok && ro) {
    char *body = NULL;
    size_t n = 0;
    if (proxy_get_buffer_bytes(HTTP_CALL_RESPONSE_BODY, 0, body_size, &body, &n) == OK) {
      char value[128];
      if (n >= sizeof value) n = sizeof value - 1;
      memcpy(value, body, n);
      value[n] = 0;
      free(body);
      add_header(REQUEST_HEADERS, "x-authz", value);
    }
    if (verdict) add_header(REQUEST_HEADERS, "x-verdict", verdict);
    proxy_continue_stream(0);
  } else {
    char hdrs[96];
    size_t hl = one_header_map(hdrs, "x-verdict", verdict ? verdict : "none");
    proxy_send_local_response(403, "authz_denied", 12, "denied\n", 7, hdrs, hl, -1);
  }
  free(verdict);
}
