/*
 * omnirelay_plugin.h: the OmniRelay native plugin ABI.
 *
 * A native plugin is a shared library (.so) exporting one symbol,
 * omnirelay_plugin_init. The proxy calls it once per process with its host API
 * table; the plugin answers with its own table: ABI version, name, a
 * create/destroy pair for a per-binding context (one per filter entry of the
 * config, built from that entry's `config` string) and one callback per
 * filter hook. The proxy calls the hooks directly from its compiled core,
 * with the Python GIL released.
 *
 * Compatibility: the host loads a plugin whose abi_major equals
 * OMNIRELAY_PLUGIN_ABI_VERSION_MAJOR and whose abi_minor is at most the
 * host's minor. A minor version only appends members to the end of the
 * tables below; a major version is any other change.
 *
 * Threading: hooks and host functions run on the thread of the event loop
 * that owns the stream; a stream handle is valid only during the hook call
 * it was passed to, and pointers the host returns (header values, body) only
 * until the plugin changes that map/body or the hook returns.
 */
#ifndef OMNIRELAY_PLUGIN_H
#define OMNIRELAY_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OMNIRELAY_PLUGIN_ABI_VERSION_MAJOR 1
#define OMNIRELAY_PLUGIN_ABI_VERSION_MINOR 0

#define OMNIRELAY_PLUGIN_INIT_SYMBOL "omnirelay_plugin_init"

/* The section between the cffi markers is read by the Python loader
 * (cffi cdef): plain declarations and integer constants only. */
/* cffi-begin */

/* What a hook returns: CONTINUE, or an HTTP status (100..599) that answers
 * the client with that status; body hooks may also return STOP, which buffers
 * the body (the hook is called again with all of it so far plus the next
 * chunk; not allowed with end_stream set). A hook that called
 * host->send_local_reply answers with that reply whatever it returns.
 * Anything else is a plugin failure (the binding's failure policy applies). */
#define OMNIRELAY_CONTINUE 0
#define OMNIRELAY_STOP 1

/* Host function results. */
#define OMNIRELAY_OK 0
#define OMNIRELAY_NOT_FOUND -1
#define OMNIRELAY_BAD_ARGUMENT -2
#define OMNIRELAY_BAD_STATE -3
#define OMNIRELAY_NO_MEMORY -4

/* Header maps. Request headers also answer the pseudo-headers ":method" and
 * ":path" (the request target; setting it rewrites the upstream target). */
#define OMNIRELAY_REQUEST_HEADERS 0
#define OMNIRELAY_RESPONSE_HEADERS 1
#define OMNIRELAY_REQUEST_TRAILERS 2
#define OMNIRELAY_RESPONSE_TRAILERS 3

/* Log levels (Python's logging levels). */
#define OMNIRELAY_LOG_DEBUG 10
#define OMNIRELAY_LOG_INFO 20
#define OMNIRELAY_LOG_WARNING 30
#define OMNIRELAY_LOG_ERROR 40

/* An HTTP stream, opaque to the plugin. */
typedef struct omnirelay_stream omnirelay_stream;

typedef struct omnirelay_host_api {
    uint32_t abi_major;
    uint32_t abi_minor;
    /* The first value of a header (case-insensitive name). */
    int (*get_header)(omnirelay_stream *stream, int map, const char *name, size_t name_len,
                      const char **value, size_t *value_len);
    /* Replace every value of a header by one value. name and value may point
     * into the same map (as returned by get_header). */
    int (*set_header)(omnirelay_stream *stream, int map, const char *name, size_t name_len,
                      const char *value, size_t value_len);
    /* Append a value (keeps the existing ones). */
    int (*add_header)(omnirelay_stream *stream, int map, const char *name, size_t name_len,
                      const char *value, size_t value_len);
    /* Remove every value of a header; OMNIRELAY_NOT_FOUND if there was none. */
    int (*remove_header)(omnirelay_stream *stream, int map, const char *name, size_t name_len);
    /* The body chunk of the running body hook (after any replacement). */
    int (*get_body)(omnirelay_stream *stream, const char **data, size_t *len);
    /* Replace the body chunk of the running body hook. */
    int (*set_body)(omnirelay_stream *stream, const char *data, size_t len);
    /* Answer the client with status (100..599), body and a reason (NUL-terminated,
     * NULL for the default) in the x-omnirelay-reason header. Returns status, so a
     * hook can `return host->send_local_reply(...)`; a negative value on bad input. */
    int (*send_local_reply)(omnirelay_stream *stream, int status, const char *body,
                            size_t body_len, const char *reason);
    /* Log to the proxy's `omnirelay.extensions.native` logger. */
    void (*log)(int level, const char *msg, size_t len);
    /* Per-stream metadata shared with Python filters (stream.metadata, string values).
     * get copies up to cap bytes into buf and returns the value's full length
     * (OMNIRELAY_NOT_FOUND if absent or not a string). */
    int64_t (*get_metadata)(omnirelay_stream *stream, const char *key, size_t key_len,
                            char *buf, size_t cap);
    /* Set a UTF-8 string value (OMNIRELAY_BAD_ARGUMENT if not valid UTF-8). */
    int (*set_metadata)(omnirelay_stream *stream, const char *key, size_t key_len,
                        const char *value, size_t value_len);
} omnirelay_host_api;

/* A filter hook. ctx is the binding's context from create(). */
typedef int (*omnirelay_hook)(void *ctx, omnirelay_stream *stream, int end_stream);

typedef struct omnirelay_plugin {
    uint32_t abi_major;          /* OMNIRELAY_PLUGIN_ABI_VERSION_MAJOR */
    uint32_t abi_minor;          /* OMNIRELAY_PLUGIN_ABI_VERSION_MINOR */
    const char *name;
    /* Build one binding's context from its config (config_len bytes, not
     * NUL-terminated). Return 0 and set *ctx, or non-zero after writing a
     * NUL-terminated reason into err (err_cap bytes). May be NULL. */
    int (*create)(const char *config, size_t config_len, void **ctx, char *err, size_t err_cap);
    /* Release a context (when the config that used it is unloaded). May be NULL. */
    void (*destroy)(void *ctx);
    /* Hooks; NULL ones are never called. Trailer hooks get end_stream = 1;
     * on_log runs when the stream ends (its return value is ignored). */
    omnirelay_hook on_request_headers;
    omnirelay_hook on_request_body;
    omnirelay_hook on_request_trailers;
    omnirelay_hook on_response_headers;
    omnirelay_hook on_response_body;
    omnirelay_hook on_response_trailers;
    omnirelay_hook on_log;
} omnirelay_plugin;

/* The one symbol a plugin exports: keep `host` (it outlives the library) and
 * return the plugin's table (static storage), or NULL to refuse to load. */
typedef const omnirelay_plugin *(*omnirelay_plugin_init_fn)(const omnirelay_host_api *host);

/* cffi-end */

#if defined(__GNUC__)
#define OMNIRELAY_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define OMNIRELAY_PLUGIN_EXPORT
#endif

OMNIRELAY_PLUGIN_EXPORT const omnirelay_plugin *omnirelay_plugin_init(
    const omnirelay_host_api *host);

#ifdef __cplusplus
}
#endif

#endif /* OMNIRELAY_PLUGIN_H */
