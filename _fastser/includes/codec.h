/* The codec's few reads of CPython object internals, each behind the Python version that defines it, and byte
 * helpers the hot loops inline. Everything here is a static inline function of a handful of instructions: the walk
 * calls them once per value, where a call into the C API would cost more than the work.
 */
#ifndef ACTORS_CODEC_H
#define ACTORS_CODEC_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

#if PY_VERSION_HEX < 0x030B0000
#include <longintrepr.h>
#endif

#if defined(__GNUC__)
#define FS_INLINE static inline __attribute__((always_inline))
#else
#define FS_INLINE static inline
#endif

/* The largest count or length a u32 field holds, as a C constant (Cython would make a Python int of the literal). */
#define FS_U32_MAX ((Py_ssize_t)0xFFFFFFFFLL)

/* Copy the n >= sizeof(T) bytes at s to dst as two overlapping T-sized loads and stores (first and last). */
#define FS_COPY_ENDS(T)                                 \
    do {                                                \
        T first_, last_;                                \
        memcpy(&first_, s, sizeof(T));                  \
        memcpy(&last_, s + n - sizeof(T), sizeof(T));   \
        memcpy(dst, &first_, sizeof(T));                \
        memcpy(dst + n - sizeof(T), &last_, sizeof(T)); \
    } while (0)

/* Copy n bytes, short runs inline: two overlapping loads and stores instead of a call into libc. */
FS_INLINE void fs_copy(char *dst, const void *src, Py_ssize_t n) {
    const char *s = (const char *)src;
    if (n > 16) {
        memcpy(dst, s, (size_t)n);
    } else if (n >= 8) {
        FS_COPY_ENDS(uint64_t);
    } else if (n >= 4) {
        FS_COPY_ENDS(uint32_t);
    } else if (n > 0) {
        dst[0] = s[0];
        dst[n / 2] = s[n / 2];
        dst[n - 1] = s[n - 1];
    }
}

/* An int that fits one internal digit (|v| < 2**30): its value without a call. 1 if it did, 0 for larger ints. */
FS_INLINE int fs_long_small(PyObject *o, long long *v) {
#if PY_VERSION_HEX >= 0x030C0000
    if (PyUnstable_Long_IsCompact((PyLongObject *)o)) {
        *v = (long long)PyUnstable_Long_CompactValue((PyLongObject *)o);
        return 1;
    }
    return 0;
#else
    Py_ssize_t size = Py_SIZE(o);
    if (size == 0) {
        *v = 0;
        return 1;
    }
    if (size == 1 || size == -1) {
        long long digit = (long long)((PyLongObject *)o)->ob_digit[0];
        *v = size < 0 ? -digit : digit;
        return 1;
    }
    return 0;
#endif
}

/* Do the n bytes at p hold only ASCII? Eight bytes at a time. */
FS_INLINE int fs_is_ascii(const char *p, Py_ssize_t n) {
    uint64_t acc = 0, w;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        acc |= w;
    }
    for (; i < n; i++)
        acc |= (unsigned char)p[i];
    return (acc & 0x8080808080808080ULL) == 0;
}

/* A new str of the n ASCII bytes at p (the caller checked them): one allocation and a copy, no UTF-8 decoder. */
FS_INLINE PyObject *fs_ascii_str(const char *p, Py_ssize_t n) {
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL && n)
        memcpy(PyUnicode_DATA(s), p, (size_t)n);
    return s;
}

#endif
