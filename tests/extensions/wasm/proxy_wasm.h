/* A minimal Proxy-Wasm ABI 0.2.1 binding for the test plugins (C, wasm32-wasi).
 * The imports are the spec's; the helpers keep the test plugins short. */
#ifndef TEST_PROXY_WASM_H
#define TEST_PROXY_WASM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define IMPORT(name) __attribute__((import_module("env"), import_name(#name)))
#define EXPORT(name) __attribute__((export_name(#name)))

enum { OK = 0, NOT_FOUND = 1, BAD_ARGUMENT = 2, CAS_MISMATCH = 8, EMPTY = 7 };
enum { CONTINUE = 0, PAUSE = 1 };
enum { LOG_TRACE, LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_CRITICAL };
enum { REQUEST_HEADERS = 0, REQUEST_TRAILERS = 1, RESPONSE_HEADERS = 2, RESPONSE_TRAILERS = 3 };
enum { HTTP_CALL_RESPONSE_HEADERS = 6, HTTP_CALL_RESPONSE_TRAILERS = 7 };
enum { REQUEST_BODY = 0, RESPONSE_BODY = 1, HTTP_CALL_RESPONSE_BODY = 4, VM_CONFIGURATION = 6,
       PLUGIN_CONFIGURATION = 7 };
enum { COUNTER = 0, GAUGE = 1, HISTOGRAM = 2 };

IMPORT(proxy_log) int proxy_log(int level, const char *msg, size_t len);
IMPORT(proxy_get_buffer_bytes) int proxy_get_buffer_bytes(int type, size_t start, size_t max,
                                                          char **data, size_t *len);
IMPORT(proxy_set_buffer_bytes) int proxy_set_buffer_bytes(int type, size_t start, size_t size,
                                                          const char *data, size_t len);
IMPORT(proxy_get_header_map_pairs) int proxy_get_header_map_pairs(int type, char **data,
                                                                  size_t *len);
IMPORT(proxy_get_header_map_value) int proxy_get_header_map_value(int type, const char *key,
                                                                  size_t klen, char **value,
                                                                  size_t *vlen);
IMPORT(proxy_add_header_map_value) int proxy_add_header_map_value(int type, const char *key,
                                                                  size_t klen, const char *value,
                                                                  size_t vlen);
IMPORT(proxy_replace_header_map_value) int proxy_replace_header_map_value(
    int type, const char *key, size_t klen, const char *value, size_t vlen);
IMPORT(proxy_remove_header_map_value) int proxy_remove_header_map_value(int type, const char *key,
                                                                        size_t klen);
IMPORT(proxy_send_local_response) int proxy_send_local_response(
    uint32_t status, const char *details, size_t dlen, const char *body, size_t blen,
    const char *headers, size_t hlen, int32_t grpc_status);
IMPORT(proxy_get_property) int proxy_get_property(const char *path, size_t plen, char **value,
                                                  size_t *vlen);
IMPORT(proxy_set_tick_period_milliseconds) int proxy_set_tick_period_milliseconds(uint32_t ms);
IMPORT(proxy_get_shared_data) int proxy_get_shared_data(const char *key, size_t klen,
                                                        char **value, size_t *vlen,
                                                        uint32_t *cas);
IMPORT(proxy_set_shared_data) int proxy_set_shared_data(const char *key, size_t klen,
                                                        const char *value, size_t vlen,
                                                        uint32_t cas);
IMPORT(proxy_register_shared_queue) int proxy_register_shared_queue(const char *name, size_t len,
                                                                    uint32_t *id);
IMPORT(proxy_resolve_shared_queue) int proxy_resolve_shared_queue(const char *vm, size_t vlen,
                                                                  const char *name, size_t len,
                                                                  uint32_t *id);
IMPORT(proxy_enqueue_shared_queue) int proxy_enqueue_shared_queue(uint32_t id, const char *v,
                                                                  size_t len);
IMPORT(proxy_dequeue_shared_queue) int proxy_dequeue_shared_queue(uint32_t id, char **v,
                                                                  size_t *len);
IMPORT(proxy_set_effective_context) int proxy_set_effective_context(uint32_t id);
IMPORT(proxy_continue_stream) int proxy_continue_stream(int type);
IMPORT(proxy_http_call) int proxy_http_call(const char *upstream, size_t ulen,
                                            const char *headers, size_t hlen, const char *body,
                                            size_t blen, const char *trailers, size_t tlen,
                                            uint32_t timeout_ms, uint32_t *token);
IMPORT(proxy_define_metric) int proxy_define_metric(int type, const char *name, size_t len,
                                                    uint32_t *id);
IMPORT(proxy_increment_metric) int proxy_increment_metric(uint32_t id, int64_t delta);
IMPORT(proxy_record_metric) int proxy_record_metric(uint32_t id, uint64_t value);
IMPORT(proxy_get_metric) int proxy_get_metric(uint32_t id, uint64_t *value);

/* Every test plugin: the ABI marker and the allocator the host uses for returned data. */
EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}
EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t n) { return malloc(n); }

static inline void log_str(int level, const char *s) { proxy_log(level, s, strlen(s)); }

/* A header value as a NUL-terminated malloc'ed string, or NULL. */
static inline char *get_header(int map, const char *name) {
  char *v = NULL;
  size_t n = 0;
  if (proxy_get_header_map_value(map, name, strlen(name), &v, &n) != OK) return NULL;
  char *s = malloc(n + 1);
  if (n) memcpy(s, v, n);
  s[n] = 0;
  free(v);
  return s;
}

static inline int add_header(int map, const char *name, const char *value) {
  return proxy_add_header_map_value(map, name, strlen(name), value, strlen(value));
}

static inline int set_header(int map, const char *name, const char *value) {
  return proxy_replace_header_map_value(map, name, strlen(name), value, strlen(value));
}

static inline int remove_header(int map, const char *name) {
  return proxy_remove_header_map_value(map, name, strlen(name));
}

/* A property (path tokens separated by NUL, as the SDKs send them) as a C string. */
static inline char *get_property(const char *path, size_t plen) {
  char *v = NULL;
  size_t n = 0;
  if (proxy_get_property(path, plen, &v, &n) != OK) return NULL;
  char *s = malloc(n + 1);
  if (n) memcpy(s, v, n);
  s[n] = 0;
  free(v);
  return s;
}

static inline uint32_t define_metric(int type, const char *name) {
  uint32_t id = 0;
  proxy_define_metric(type, name, strlen(name), &id);
  return id;
}

/* One header, serialized as the spec's map (for proxy_send_local_response). */
static inline size_t one_header_map(char *out, const char *k, const char *v) {
  uint32_t kl = strlen(k), vl = strlen(v), count = 1;
  memcpy(out, &count, 4);
  memcpy(out + 4, &kl, 4);
  memcpy(out + 8, &vl, 4);
  memcpy(out + 12, k, kl);
  out[12 + kl] = 0;
  memcpy(out + 13 + kl, v, vl);
  out[13 + kl + vl] = 0;
  return 14 + kl + vl;
}

#endif
