/*
 * A native plugin for the tests: what it does is chosen by its config, one
 * directive per line (see tests/extensions/test_native.py). Variants built with
 * -D: ABI_MAJOR=<n> (an incompatible plugin), NO_INIT (no init symbol),
 * REFUSE (init returns NULL), UNDEFINED_SYMBOL (a library that cannot be loaded).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "omnirelay_plugin.h"

#ifndef ABI_MAJOR
#define ABI_MAJOR OMNIRELAY_PLUGIN_ABI_VERSION_MAJOR
#endif

#define MAX_DIRECTIVES 16

typedef struct {
    char op[32];
    char a[128];
    char b[256];
} directive;

typedef struct {
    int n;
    directive d[MAX_DIRECTIVES];
} test_ctx;

static const omnirelay_host_api *host;
static int live_contexts;

/* From the Python interpreter hosting the proxy: is the GIL held by this thread? */
extern int PyGILState_Check(void);

static int create(const char *config, size_t len, void **out, char *err, size_t err_cap) {
    test_ctx *c = calloc(1, sizeof *c);
    const char *p = config, *end = config + len;
    if (!c) return -1;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        char line[512];
        size_t n = (size_t)((eol ? eol : end) - p);
        if (n >= sizeof line || c->n == MAX_DIRECTIVES) {
            snprintf(err, err_cap, "directive too long or too many");
            free(c);
            return -1;
        }
        memcpy(line, p, n);
        line[n] = '\0';
        p = eol ? eol + 1 : end;
        if (n == 0) continue;
        directive *d = &c->d[c->n++];
        /* op, first word, rest of the line */
        if (sscanf(line, "%31s %127s %255[^\n]", d->op, d->a, d->b) < 1) continue;
        if (strcmp(d->op, "fail_create") == 0) {
            snprintf(err, err_cap, "told to fail: %s", d->a);
            free(c);
            return 7;
        }
    }
    *out = c;
    live_contexts++;
    return 0;
}

static void destroy(void *ctx) {
    free(ctx);
    live_contexts--;
}

OMNIRELAY_PLUGIN_EXPORT int test_plugin_live_contexts(void) { return live_contexts; }

static int is(const directive *d, const char *op) { return strcmp(d->op, op) == 0; }

static int on_request_headers(void *ctx, omnirelay_stream *s, int end_stream) {
    test_ctx *c = ctx;
    (void)end_stream;
    for (int i = 0; i < c->n; i++) {
        directive *d = &c->d[i];
        if (is(d, "set_request")) {
            host->set_header(s, OMNIRELAY_REQUEST_HEADERS, d->a, strlen(d->a), d->b, strlen(d->b));
        } else if (is(d, "add_request")) {
            host->add_header(s, OMNIRELAY_REQUEST_HEADERS, d->a, strlen(d->a), d->b, strlen(d->b));
        } else if (is(d, "remove_request")) {
            int rc = host->remove_header(s, OMNIRELAY_REQUEST_HEADERS, d->a, strlen(d->a));
            char v[8];
            snprintf(v, sizeof v, "%d", rc);
            host->set_header(s, OMNIRELAY_REQUEST_HEADERS, "x-remove-rc", 11, v, strlen(v));
        } else if (is(d, "copy_header")) {
            /* copy before setting: the value points into the map, which the set may move */
            const char *v;
            size_t n;
            char buf[256];
            if (host->get_header(s, OMNIRELAY_REQUEST_HEADERS, d->a, strlen(d->a), &v, &n) ==
                    OMNIRELAY_OK && n < sizeof buf) {
                memcpy(buf, v, n);
                host->set_header(s, OMNIRELAY_REQUEST_HEADERS, d->b, strlen(d->b), buf, n);
            }
        } else if (is(d, "copy_header_direct")) {
            /* the value points into the map being edited: the host copies it */
            const char *v;
            size_t n;
            if (host->get_header(s, OMNIRELAY_REQUEST_HEADERS, d->a, strlen(d->a), &v, &n) ==
                    OMNIRELAY_OK)
                host->add_header(s, OMNIRELAY_REQUEST_HEADERS, d->b, strlen(d->b), v, n);
        } else if (is(d, "set_path")) {
            host->set_header(s, OMNIRELAY_REQUEST_HEADERS, ":path", 5, d->a, strlen(d->a));
        } else if (is(d, "metadata")) {
            host->set_metadata(s, d->a, strlen(d->a), d->b, strlen(d->b));
        } else if (is(d, "metadata_to_header")) {
            char buf[256];
            int64_t n = host->get_metadata(s, d->a, strlen(d->a), buf, sizeof buf);
            if (n >= 0 && (size_t)n <= sizeof buf)
                host->set_header(s, OMNIRELAY_REQUEST_HEADERS, d->b, strlen(d->b), buf, (size_t)n);
            else
                host->set_header(s, OMNIRELAY_REQUEST_HEADERS, d->b, strlen(d->b), "absent", 6);
        } else if (is(d, "probe_errors")) {
            /* misuse of the host API gets error codes, never a crash */
            const char *v;
            size_t n;
            char out[128];
            int body = host->get_body(s, &v, &n);
            int trailers = host->get_header(s, OMNIRELAY_REQUEST_TRAILERS, "x", 1, &v, &n);
            int bad_map = host->get_header(s, 9, "x", 1, &v, &n);
            int missing = host->get_header(s, OMNIRELAY_REQUEST_HEADERS, "x-none", 6, &v, &n);
            int bad_name = host->set_header(s, OMNIRELAY_REQUEST_HEADERS, "a b", 3, "v", 1);
            int bad_value = host->set_header(s, OMNIRELAY_REQUEST_HEADERS, "x-v", 3, "a\r\nb", 4);
            int bad_status = host->send_local_reply(s, 99, "", 0, NULL);
            int bad_reason = host->send_local_reply(s, 400, "", 0, "a\nb");
            int bad_utf8 = host->set_metadata(s, "k", 1, "\xff", 1);
            int set_body = host->set_body(s, "x", 1);
            snprintf(out, sizeof out, "%d,%d,%d,%d,%d,%d,%d,%d,%d,%d", body, trailers, bad_map,
                     missing, bad_name, bad_value, bad_status, bad_reason, bad_utf8, set_body);
            host->set_header(s, OMNIRELAY_REQUEST_HEADERS, "x-probe", 7, out, strlen(out));
        } else if (is(d, "gil_check")) {
            const char *held = PyGILState_Check() ? "held" : "released";
            host->set_header(s, OMNIRELAY_REQUEST_HEADERS, "x-gil", 5, held, strlen(held));
        } else if (is(d, "log")) {
            char msg[400];
            snprintf(msg, sizeof msg, "%s %s", d->a, d->b);
            host->log(OMNIRELAY_LOG_WARNING, msg, strlen(msg));
        } else if (is(d, "sleep_us")) {
            long us = atol(d->a);
            struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
            nanosleep(&ts, NULL);
        } else if (is(d, "deny")) {
            return atoi(d->a);
        } else if (is(d, "reply")) {
            return host->send_local_reply(s, atoi(d->a), d->b, strlen(d->b), "test_reply");
        } else if (is(d, "bad_result")) {
            return 42;
        }
    }
    return OMNIRELAY_CONTINUE;
}

static int on_request_body(void *ctx, omnirelay_stream *s, int end_stream) {
    test_ctx *c = ctx;
    for (int i = 0; i < c->n; i++) {
        if (is(&c->d[i], "upper_request_body")) {
            const char *data;
            size_t n;
            if (host->get_body(s, &data, &n) != OMNIRELAY_OK) return 500;
            char *up = malloc(n + 1);
            for (size_t k = 0; k < n; k++) up[k] = (char)toupper((unsigned char)data[k]);
            host->set_body(s, up, n);
            free(up);
        } else if (is(&c->d[i], "buffer_request_body")) {
            if (!end_stream) return OMNIRELAY_STOP;
            const char *data;
            size_t n;
            char len[32];
            host->get_body(s, &data, &n);
            snprintf(len, sizeof len, "[%zu bytes]", n);
            host->set_body(s, len, strlen(len));
        }
    }
    return OMNIRELAY_CONTINUE;
}

static int on_response_headers(void *ctx, omnirelay_stream *s, int end_stream) {
    test_ctx *c = ctx;
    (void)end_stream;
    for (int i = 0; i < c->n; i++) {
        directive *d = &c->d[i];
        if (is(d, "set_response"))
            host->set_header(s, OMNIRELAY_RESPONSE_HEADERS, d->a, strlen(d->a), d->b, strlen(d->b));
        else if (is(d, "remove_response"))
            host->remove_header(s, OMNIRELAY_RESPONSE_HEADERS, d->a, strlen(d->a));
    }
    return OMNIRELAY_CONTINUE;
}

static int on_response_body(void *ctx, omnirelay_stream *s, int end_stream) {
    test_ctx *c = ctx;
    for (int i = 0; i < c->n; i++) {
        directive *d = &c->d[i];
        if (is(d, "replace_response_body")) {
            if (!end_stream) return OMNIRELAY_STOP;  /* buffer it all */
            host->set_body(s, d->a, strlen(d->a));
        }
    }
    return OMNIRELAY_CONTINUE;
}

static int logged;

static int on_log(void *ctx, omnirelay_stream *s, int end_stream) {
    (void)ctx; (void)s; (void)end_stream;
    logged++;
    return 0;
}

OMNIRELAY_PLUGIN_EXPORT int test_plugin_logged(void) { return logged; }

static const omnirelay_plugin plugin = {
    .abi_major = ABI_MAJOR,
    .abi_minor = OMNIRELAY_PLUGIN_ABI_VERSION_MINOR,
    .name = "test_plugin",
    .create = create,
    .destroy = destroy,
    .on_request_headers = on_request_headers,
    .on_request_body = on_request_body,
    .on_response_headers = on_response_headers,
    .on_response_body = on_response_body,
    .on_log = on_log,
};

#ifdef UNDEFINED_SYMBOL
extern int omnirelay_test_missing_symbol(void);
OMNIRELAY_PLUGIN_EXPORT int uses_missing_symbol(void) { return omnirelay_test_missing_symbol(); }
#endif

#ifndef NO_INIT
OMNIRELAY_PLUGIN_EXPORT const omnirelay_plugin *omnirelay_plugin_init(const omnirelay_host_api *h) {
    host = h;
#ifdef REFUSE
    return h ? NULL : &plugin;
#else
    return h->abi_major == OMNIRELAY_PLUGIN_ABI_VERSION_MAJOR ? &plugin : NULL;
#endif
}
#else
OMNIRELAY_PLUGIN_EXPORT const omnirelay_plugin *not_the_init_symbol(const omnirelay_host_api *h) {
    host = h;
    return &plugin;
}
#endif
