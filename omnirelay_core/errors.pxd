cdef int status_for_parse_error(int hpe) noexcept
cdef object reason_phrase(int status)
