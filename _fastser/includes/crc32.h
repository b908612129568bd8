/* CRC-32 (zlib's: the same polynomial, reflection and values as zlib.crc32) for the journal, folded with carry-less
 * multiplication (PCLMULQDQ) where the CPU has it, 16 bytes a step, and zlib's table-driven crc32_z for the rest.
 *
 * Why not zlib alone: a persistent actor checksums every message it journals, and messages are small; zlib's
 * crc32_z took about 120 ns of the 230 ns a 150-byte record cost to frame, more than half of the journal's CPU.
 * The folding follows "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ Instruction" (V. Gopal,
 * E. Ozturk et al., Intel, 2009), with the bit-reflected constants for the CRC-32 polynomial 0x04C11DB7 that the
 * paper derives (the ones zlib-ng and Chromium's zlib use). tests/test_persist.py checks it against zlib.crc32 for
 * lengths on both sides of every step, and every seed kind.
 *
 * actors_crc32(crc, p, n) has crc32_z's meaning: `crc` is the running value (0 to start), the result is the value
 * after `n` more bytes. Elsewhere than x86-64 with GCC or Clang it is crc32_z.
 */
#ifndef ACTORS_CRC32_H
#define ACTORS_CRC32_H

#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

#define ACTORS_CRC_FOLD_MIN 64      /* shorter than this, zlib's table is as quick as the folding's setup */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

__attribute__((target("sse4.1,pclmul")))
static uint32_t actors_crc32_fold(uint32_t crc, const uint8_t *buf, size_t len)
{
    /* `crc` and the result are in zlib's inverted form (~value); len >= 64 and a multiple of 16. */
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL);
    const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124LL);
    const __m128i poly = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL);
    const __m128i mask32 = _mm_setr_epi32(~0, 0, ~0, 0);
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8;

    x1 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    buf += 64;
    len -= 64;

    /* fold four lanes of 16 bytes, 64 bytes a step */
    while (len >= 64) {
        x5 = _mm_clmulepi64_si128(x1, k1k2, 0x00);
        x6 = _mm_clmulepi64_si128(x2, k1k2, 0x00);
        x7 = _mm_clmulepi64_si128(x3, k1k2, 0x00);
        x8 = _mm_clmulepi64_si128(x4, k1k2, 0x00);
        x1 = _mm_clmulepi64_si128(x1, k1k2, 0x11);
        x2 = _mm_clmulepi64_si128(x2, k1k2, 0x11);
        x3 = _mm_clmulepi64_si128(x3, k1k2, 0x11);
        x4 = _mm_clmulepi64_si128(x4, k1k2, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), _mm_loadu_si128((const __m128i *)(buf + 0x00)));
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), _mm_loadu_si128((const __m128i *)(buf + 0x10)));
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), _mm_loadu_si128((const __m128i *)(buf + 0x20)));
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), _mm_loadu_si128((const __m128i *)(buf + 0x30)));
        buf += 64;
        len -= 64;
    }

    /* the four lanes into one */
    x5 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_clmulepi64_si128(x1, k3k4, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_clmulepi64_si128(x1, k3k4, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_clmulepi64_si128(x1, k3k4, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);

    /* the rest, 16 bytes a step */
    while (len >= 16) {
        x2 = _mm_loadu_si128((const __m128i *)buf);
        x5 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
        x1 = _mm_clmulepi64_si128(x1, k3k4, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        buf += 16;
        len -= 16;
    }

    /* 128 bits to 64 */
    x2 = _mm_clmulepi64_si128(x1, k3k4, 0x10);
    x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2);
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, mask32);
    x1 = _mm_clmulepi64_si128(x1, k5k0, 0x00);
    x1 = _mm_xor_si128(x1, x2);

    /* Barrett reduction to 32 bits */
    x2 = _mm_and_si128(x1, mask32);
    x2 = _mm_clmulepi64_si128(x2, poly, 0x10);
    x2 = _mm_and_si128(x2, mask32);
    x2 = _mm_clmulepi64_si128(x2, poly, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}

static int actors_crc_can_fold = -1;     /* unknown until the first call */

static inline uint32_t actors_crc32(uint32_t crc, const uint8_t *buf, size_t len)
{
    if (len >= ACTORS_CRC_FOLD_MIN) {
        if (actors_crc_can_fold < 0) {
            __builtin_cpu_init();
            actors_crc_can_fold = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
        }
        if (actors_crc_can_fold) {
            size_t chunk = len & ~(size_t)15;
            crc = ~actors_crc32_fold(~crc, buf, chunk);
            buf += chunk;
            len -= chunk;
        }
    }
    return len ? (uint32_t)crc32_z(crc, buf, len) : crc;
}

#else

static inline uint32_t actors_crc32(uint32_t crc, const uint8_t *buf, size_t len)
{
    return len ? (uint32_t)crc32_z(crc, buf, len) : crc;
}

#endif
#endif
