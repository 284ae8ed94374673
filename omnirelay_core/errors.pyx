# The one place mapping parser errno codes and proxy failures to exceptions,
# HTTP status codes and the reason strings users see in local replies.
class ProxyError(Exception):
    """Base of every error the core raises for a request it cannot serve."""
    status = 502
    reason = "upstream_error"

    def __init__(self, message="", status=None, reason=None):
        super().__init__(message or self.reason)
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason


class BadRequest(ProxyError):
    status = 400
    reason = "bad_request"


class HeadersTooLarge(BadRequest):
    status = 431
    reason = "request_header_fields_too_large"


class BodyTooLarge(BadRequest):
    status = 413
    reason = "payload_too_large"


class RequestTimeout(BadRequest):
    status = 408
    reason = "request_timeout"


class InternalError(ProxyError):
    status = 500
    reason = "internal_error"


class NoRoute(ProxyError):
    status = 404
    reason = "no_route"


class UpstreamUnavailable(ProxyError):
    status = 503
    reason = "upstream_unavailable"


class UpstreamTimeout(ProxyError):
    status = 504
    reason = "upstream_timeout"


class UpstreamReset(ProxyError):
    status = 502
    reason = "upstream_reset"


class UpstreamProtocolError(ProxyError):
    status = 502
    reason = "upstream_protocol_error"


_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created",
    202: "Accepted", 204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Payload Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    417: "Expectation Failed", 421: "Misdirected Request", 426: "Upgrade Required",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}


cdef object reason_phrase(int status):
    return _REASONS.get(status, "Unknown")


def reason_for(int status):
    return reason_phrase(status)
