# C-level declarations of the codec, so other extensions (the shared-memory store) call the encoder and decoder
# without Python overhead.
from cpython.ref cimport PyObject
from libc.stdint cimport uint64_t


cdef struct OOB:
    # An out-of-band payload (array data, large bytes) written after the stream, 64-byte aligned.
    const char* src
    Py_ssize_t nbytes
    Py_ssize_t offset        # from the start of the data region
    PyObject* array          # borrowed (kept alive by Encoder._keep); NULL unless it needs a strided copy


cdef class Entry:
    cdef readonly object cls
    cdef readonly uint64_t code
    cdef readonly str mode
    cdef readonly object serializer
    cdef readonly object deserializer
    cdef readonly tuple slots
    cdef readonly bint has_dict
    cdef int kind
    cdef object code_obj


cdef class Registry:
    cdef dict _by_type
    cdef dict _by_code
    cdef readonly int version


cdef class Encoder:
    cdef Registry registry
    cdef char* buf
    cdef Py_ssize_t cap
    cdef Py_ssize_t pos
    cdef OOB* oob
    cdef Py_ssize_t noob
    cdef Py_ssize_t oobcap
    cdef Py_ssize_t data_size
    cdef Py_ssize_t total
    cdef list _keep
    cdef PyObject** stack
    cdef Py_ssize_t* idx
    cdef int* kinds
    cdef bint prepared
    cdef bint busy

    cdef Py_ssize_t prepare_c(self, object obj) except -1
    cpdef Py_ssize_t prepare(self, object obj) except -1
    cdef int write_to(self, char* dst) except -1
    cdef Py_ssize_t write_stream_to(self, char* dst) except -1
    cdef bytes encode_c(self, object obj)
    cdef int _grow(self, Py_ssize_t n) except -1
    cdef int _enc_rest(self, object obj, Py_ssize_t depth) except -1
    cdef int _too_deep(self, object obj, Py_ssize_t depth) except -1
    cdef int _enc_str_slow(self, object obj, Py_ssize_t depth) except -1
    cdef int _enc_int_big(self, object obj, Py_ssize_t depth) except -1
    cdef int _enc_blob(self, unsigned char tag_inline, unsigned char tag_oob, const char* p, Py_ssize_t n,
                       object owner) except -1
    cdef int _enc_array(self, object arr, Py_ssize_t depth) except -1
    cdef int _enc_npscalar(self, object obj, Py_ssize_t depth) except -1
    cdef int _enc_other(self, object obj, Py_ssize_t depth) except -1
    cdef int _enc_fields(self, Entry entry, object obj, Py_ssize_t depth) except -1
    cdef int _enc_dtype(self, object dtype, object obj, Py_ssize_t depth) except -1
    cdef int _add_oob(self, const char* src, Py_ssize_t nbytes, object owner, bint strided) except -1
    cdef object _fail(self, object obj, Py_ssize_t depth, str reason)
    cdef void _release(self)


cdef class Decoder:
    cdef Registry registry
    cdef const char* base
    cdef Py_ssize_t pos
    cdef Py_ssize_t end
    cdef Py_ssize_t data_start
    cdef Py_ssize_t total
    cdef object owner
    cdef object keepalive
    cdef Py_ssize_t cur
    cdef Py_ssize_t* idx
    cdef int* kinds
    cdef PyObject** keys
    cdef bint live

    cdef object decode_ptr(self, const char* p, Py_ssize_t n, object keepalive)
    cdef object _dec_rest(self, unsigned char tag, Py_ssize_t depth)
    cdef object _dec_array(self, Py_ssize_t depth)
    cdef object _dec_npscalar(self, Py_ssize_t depth)
    cdef object _dec_dtype(self)
    cdef object _dec_registered(self, unsigned char tag, Py_ssize_t depth)
    cdef const char* _oob(self, uint64_t off, uint64_t n) except NULL
    cdef object _error(self, str what)
