cdef object reason_phrase(int status)
