/*
 * add_header: an OmniRelay native plugin that adds a request header and a
 * response header, and optionally denies a path prefix with a local reply.
 *
 * config (one directive per line, all optional):
 *   request_header <name> <value>    default: x-native-plugin add_header
 *   response_header <name> <value>   default: x-native-plugin add_header
 *   deny_prefix <path prefix>        answer 403 for request paths starting with it
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "omnirelay_plugin.h"

typedef struct {
    char *req_name, *req_value, *resp_name, *resp_value, *deny_prefix;
} add_header_ctx;

static const omnirelay_host_api *host;

static char *dup_str(const char *p, size_t n) {
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

/* The next space-separated word of [*p, end), or NULL. */
static char *word(const char **p, const char *end, int rest_of_line) {
    const char *s = *p, *e;
    while (s < end && *s == ' ') s++;
    e = s;
    while (e < end && *e != '\n' && (rest_of_line || *e != ' ')) e++;
    *p = e;
    return e > s ? dup_str(s, (size_t)(e - s)) : NULL;
}

static void destroy(void *ptr) {
    add_header_ctx *c = ptr;
    if (!c) return;
    free(c->req_name); free(c->req_value); free(c->resp_name); free(c->resp_value);
    free(c->deny_prefix);
    free(c);
}

static int create(const char *config, size_t len, void **out, char *err, size_t err_cap) {
    add_header_ctx *c = calloc(1, sizeof *c);
    const char *p = config, *end = config + len;
    if (!c) return -1;
    while (p < end) {
        char *key = word(&p, end, 0), **name = NULL, **value = NULL;
        if (key && strcmp(key, "request_header") == 0) {
            name = &c->req_name; value = &c->req_value;
        } else if (key && strcmp(key, "response_header") == 0) {
            name = &c->resp_name; value = &c->resp_value;
        } else if (key && strcmp(key, "deny_prefix") == 0) {
            free(c->deny_prefix);
            c->deny_prefix = word(&p, end, 1);
        } else if (key) {
            snprintf(err, err_cap, "unknown directive '%s'", key);
            free(key);
            destroy(c);
            return -1;
        }
        if (name) {
            free(*name); free(*value);
            *name = word(&p, end, 0);
            *value = word(&p, end, 1);
            if (!*name || !*value) {
                snprintf(err, err_cap, "%s needs a name and a value", key);
                free(key);
                destroy(c);
                return -1;
            }
        }
        free(key);
        while (p < end && *p != '\n') p++;
        if (p < end) p++;
    }
    if (!c->req_name) { c->req_name = strdup("x-native-plugin"); c->req_value = strdup("add_header"); }
    if (!c->resp_name) { c->resp_name = strdup("x-native-plugin"); c->resp_value = strdup("add_header"); }
    *out = c;
    return 0;
}

static int on_request_headers(void *ptr, omnirelay_stream *s, int end_stream) {
    add_header_ctx *c = ptr;
    const char *path;
    size_t path_len;
    (void)end_stream;
    if (c->deny_prefix &&
        host->get_header(s, OMNIRELAY_REQUEST_HEADERS, ":path", 5, &path, &path_len) == OMNIRELAY_OK &&
        path_len >= strlen(c->deny_prefix) && memcmp(path, c->deny_prefix, strlen(c->deny_prefix)) == 0) {
        static const char body[] = "denied by add_header\n";
        return host->send_local_reply(s, 403, body, sizeof body - 1, "add_header_denied");
    }
    host->set_header(s, OMNIRELAY_REQUEST_HEADERS, c->req_name, strlen(c->req_name),
                     c->req_value, strlen(c->req_value));
    return OMNIRELAY_CONTINUE;
}

static int on_response_headers(void *ptr, omnirelay_stream *s, int end_stream) {
    add_header_ctx *c = ptr;
    (void)end_stream;
    host->set_header(s, OMNIRELAY_RESPONSE_HEADERS, c->resp_name, strlen(c->resp_name),
                     c->resp_value, strlen(c->resp_value));
    return OMNIRELAY_CONTINUE;
}

static const omnirelay_plugin plugin = {
    .abi_major = OMNIRELAY_PLUGIN_ABI_VERSION_MAJOR,
    .abi_minor = OMNIRELAY_PLUGIN_ABI_VERSION_MINOR,
    .name = "add_header",
    .create = create,
    .destroy = destroy,
    .on_request_headers = on_request_headers,
    .on_response_headers = on_response_headers,
};

OMNIRELAY_PLUGIN_EXPORT const omnirelay_plugin *omnirelay_plugin_init(const omnirelay_host_api *h) {
    host = h;
    return &plugin;
}
