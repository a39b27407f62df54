/* Shared by the harnesses: a byte reader over the fuzzer's input. */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *p;
    size_t n;
} input;

static inline uint32_t take(input *in, int bytes)
{
    uint32_t v = 0;
    for (int i = 0; i < bytes && in->n; i++, in->p++, in->n--)
        v = v << 8 | *in->p;
    return v;
}

/* A heap copy of exactly n bytes: ASan catches one byte past it. */
static inline uint8_t *exact(const void *src, size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    if (src && n)
        memcpy(p, src, n);
    return p;
}

#endif
