/* Header edits on request and response, properties, configuration, and the WASI imports a
 * libc-built module uses (printf -> fd_write, getenv -> environ_*, time -> clock_time_get,
 * getentropy -> random_get). */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "proxy_wasm.h"

static char tag[64] = "none";

EXPORT(proxy_on_vm_start) int on_vm_start(uint32_t root, size_t vm_config_size) {
  printf("headers plugin: vm start (vm configuration %zu bytes)\n", vm_config_size);
  fflush(stdout);
  return 1;
}

EXPORT(proxy_on_configure) int on_configure(uint32_t root, size_t size) {
  char *data = NULL;
  size_t n = 0;
  if (size && proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, &data, &n) == OK) {
    if (n >= sizeof(tag)) n = sizeof(tag) - 1;
    memcpy(tag, data, n);
    tag[n] = 0;
    free(data);
  }
  log_str(LOG_INFO, "headers plugin configured");
  return 1;
}

static void copy_property(const char *path, size_t plen, const char *header) {
  char *v = get_property(path, plen);
  add_header(REQUEST_HEADERS, header, v ? v : "<none>");
  free(v);
}

static void copy_header(const char *name, const char *header) {
  char *v = get_header(REQUEST_HEADERS, name);
  add_header(REQUEST_HEADERS, header, v ? v : "<none>");
  free(v);
}

EXPORT(proxy_on_request_headers) int on_request_headers(uint32_t ctx, size_t n, int eos) {
  char buf[32];
  add_header(REQUEST_HEADERS, "x-wasm-tag", tag);
  set_header(REQUEST_HEADERS, "x-replace-me", "replaced");
  remove_header(REQUEST_HEADERS, "x-remove-me");
  copy_property("request\0path", 12, "x-prop-path");
  copy_property("request\0method", 14, "x-prop-method");
  copy_property("source\0address", 14, "x-prop-source");
  copy_property("plugin_name", 11, "x-prop-plugin");
  copy_property("plugin_root_id", 14, "x-prop-root");
  copy_property("request.url_path", 16, "x-prop-url-path");
  copy_header(":path", "x-pseudo-path");
  copy_header(":method", "x-pseudo-method");
  copy_header(":authority", "x-pseudo-authority");
  const char *env = getenv("PLUGIN_GREETING");
  add_header(REQUEST_HEADERS, "x-env", env ? env : "<unset>");
  add_header(REQUEST_HEADERS, "x-clock", time(NULL) > 1600000000 ? "ok" : "bad");
  unsigned char rnd[16];
  add_header(REQUEST_HEADERS, "x-random", getentropy(rnd, sizeof rnd) == 0 ? "ok" : "bad");
  char *pairs = NULL;
  size_t len = 0;
  if (proxy_get_header_map_pairs(REQUEST_HEADERS, &pairs, &len) == OK && len >= 4) {
    uint32_t count;
    memcpy(&count, pairs, 4);
    snprintf(buf, sizeof buf, "%u", count);
    add_header(REQUEST_HEADERS, "x-header-count", buf);
    free(pairs);
  }
  snprintf(buf, sizeof buf, "%zu", n);
  add_header(REQUEST_HEADERS, "x-num-headers", buf);
  return CONTINUE;
}

EXPORT(proxy_on_response_headers) int on_response_headers(uint32_t ctx, size_t n, int eos) {
  char buf[96];
  add_header(RESPONSE_HEADERS, "x-wasm-response", "1");
  char *origin = get_header(RESPONSE_HEADERS, "x-origin");
  snprintf(buf, sizeof buf, "wasm-%s", origin ? origin : "none");
  free(origin);
  set_header(RESPONSE_HEADERS, "x-origin", buf);
  remove_header(RESPONSE_HEADERS, "server");
  char *status = get_header(RESPONSE_HEADERS, ":status");
  add_header(RESPONSE_HEADERS, "x-status-seen", status ? status : "<none>");
  free(status);
  char *code = NULL;
  size_t len = 0;
  if (proxy_get_property("response\0code", 13, &code, &len) == OK && len == 8) {
    int64_t v;
    memcpy(&v, code, 8);
    snprintf(buf, sizeof buf, "%lld", (long long)v);
    add_header(RESPONSE_HEADERS, "x-response-code", buf);
    free(code);
  }
  return CONTINUE;
}

EXPORT(proxy_on_log) void on_log(uint32_t ctx) { log_str(LOG_DEBUG, "headers plugin: stream done"); }
