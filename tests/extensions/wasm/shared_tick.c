/* Ticks, shared data with compare-and-swap, a shared queue, metrics, and streams paused by
 * the plugin and resumed from its tick. */
#include <stdio.h>

#include "proxy_wasm.h"

static uint32_t queue_id, m_requests, m_ticks, m_path_len;
static uint32_t paused[64];
static int npaused;

static uint64_t shared_get(const char *key, uint32_t *cas) {
  char *v = NULL;
  size_t n = 0;
  *cas = 0;
  if (proxy_get_shared_data(key, strlen(key), &v, &n, cas) != OK) return 0;
  char buf[32] = {0};
  memcpy(buf, v, n < 31 ? n : 31);
  free(v);
  return strtoull(buf, NULL, 10);
}

static void shared_add(const char *key, uint64_t delta) {
  for (int tries = 0; tries < 10; tries++) {
    uint32_t cas;
    uint64_t v = shared_get(key, &cas);
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%llu", (unsigned long long)(v + delta));
    if (proxy_set_shared_data(key, strlen(key), buf, n, cas) != CAS_MISMATCH) return;
  }
}

EXPORT(proxy_on_vm_start) int on_vm_start(uint32_t root, size_t size) {
  proxy_set_tick_period_milliseconds(20);
  proxy_register_shared_queue("events", 6, &queue_id);
  m_requests = define_metric(COUNTER, "wasm_test.requests");
  m_ticks = define_metric(GAUGE, "wasm_test.ticks");
  m_path_len = define_metric(HISTOGRAM, "wasm_test.path_len");
  return 1;
}

EXPORT(proxy_on_tick) void on_tick(uint32_t root) {
  uint32_t cas;
  shared_add("ticks", 1);
  proxy_record_metric(m_ticks, shared_get("ticks", &cas));
  for (int i = 0; i < npaused; i++) {
    if (proxy_set_effective_context(paused[i]) != OK) continue;
    add_header(REQUEST_HEADERS, "x-resumed-by", "tick");
    proxy_continue_stream(0);
  }
  npaused = 0;
}

EXPORT(proxy_on_queue_ready) void on_queue_ready(uint32_t root, uint32_t id) {
  char *v = NULL;
  size_t n = 0;
  while (proxy_dequeue_shared_queue(id, &v, &n) == OK) {
    shared_add("queued", 1);
    free(v);
  }
}

EXPORT(proxy_on_request_headers) int on_request_headers(uint32_t ctx, size_t n, int eos) {
  char buf[32];
  uint32_t cas, other;
  proxy_increment_metric(m_requests, 1);
  char *path = get_header(REQUEST_HEADERS, ":path");
  proxy_record_metric(m_path_len, path ? strlen(path) : 0);
  proxy_enqueue_shared_queue(queue_id, path ? path : "", path ? strlen(path) : 0);
  free(path);
  snprintf(buf, sizeof buf, "%llu", (unsigned long long)shared_get("ticks", &cas));
  add_header(REQUEST_HEADERS, "x-ticks", buf);
  snprintf(buf, sizeof buf, "%llu", (unsigned long long)shared_get("queued", &cas));
  add_header(REQUEST_HEADERS, "x-queued", buf);
  uint64_t count = 0;
  proxy_get_metric(m_requests, &count);
  snprintf(buf, sizeof buf, "%llu", (unsigned long long)count);
  add_header(REQUEST_HEADERS, "x-requests-metric", buf);
  /* the queue was registered under this plugin's vm_id */
  char *vm_id = get_property("plugin_vm_id", 12);
  add_header(REQUEST_HEADERS, "x-queue-resolves",
             vm_id && proxy_resolve_shared_queue(vm_id, strlen(vm_id), "events", 6, &other) == OK
                     && other == queue_id
                 ? "yes" : "no");
  add_header(REQUEST_HEADERS, "x-other-vm-queue",
             proxy_resolve_shared_queue("elsewhere", 9, "events", 6, &other) == NOT_FOUND
                 ? "not-found" : "found");
  free(vm_id);
  char *pause = get_header(REQUEST_HEADERS, "x-pause");
  int wants_pause = pause != NULL;
  free(pause);
  if (wants_pause && npaused < 64) {
    paused[npaused++] = ctx;
    return PAUSE;
  }
  return CONTINUE;
}
