/* The FPDU receive path with placement: posted receives, registrations and
 * reads of sizes the input picks, each in a heap block of exactly its size;
 * the rest of the input is the TCP stream, fed in the pieces it picks. */
#include <assert.h>

#include "../smbdirect_socket/_wire/fpdu.h"
#include "common.h"

#define RECEIVES 4
#define REGIONS 3
#define READS 2

typedef struct {
    wire_span receives[RECEIVES];
    size_t posted; /* receives taken so far (the harness's queue) */
    wire_region regions[REGIONS];
    wire_span reads[READS];
    uint32_t sinks[READS];
    size_t reads_done;
} targets;

static int receive(void *opaque, size_t index, wire_span *out)
{
    targets *t = opaque;
    if (t->posted + index >= RECEIVES)
        return -1;
    *out = t->receives[t->posted + index];
    return 0;
}

static int region(void *opaque, uint32_t stag, wire_region *out)
{
    targets *t = opaque;
    for (int i = 0; i < REGIONS; i++)
        if (t->regions[i].stag >> 8 == stag >> 8) {
            *out = t->regions[i];
            return 0;
        }
    return -1;
}

static int read_target(void *opaque, size_t index, wire_span *out, uint32_t *sink)
{
    targets *t = opaque;
    if (t->reads_done + index >= READS)
        return -1;
    *out = t->reads[t->reads_done + index];
    *sink = t->sinks[t->reads_done + index];
    return 0;
}

static int invalidate(void *opaque, uint32_t stag)
{
    targets *t = opaque;
    for (int i = 0; i < REGIONS; i++)
        if (t->regions[i].stag == stag && t->regions[i].valid) {
            t->regions[i].valid = 0;
            return 0;
        }
    assert(!"the core invalidated a token it had not checked");
    return -1;
}

static const wire_rx_ops ops = {receive, region, read_target, invalidate};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input in = {data, size};
    targets t = {0};
    wire_rx_state st = {0};
    st.crc = take(&in, 1) & 1;
    st.send_msn = 1;
    for (int i = 0; i < RECEIVES; i++) {
        t.receives[i].len = take(&in, 2) % 4096;
        t.receives[i].base = exact(NULL, t.receives[i].len);
    }
    for (int i = 0; i < REGIONS; i++) {
        wire_region *r = &t.regions[i];
        r->stag = (uint32_t)(i + 1) << 8 | (take(&in, 1) & 3);
        r->access = take(&in, 1) & 7;
        r->address = (uint64_t)take(&in, 4) << (take(&in, 1) & 32);
        r->valid = 1;
        r->span.len = take(&in, 2) % 8192;
        r->span.base = exact(NULL, r->span.len);
    }
    for (int i = 0; i < READS; i++) {
        t.sinks[i] = take(&in, 4);
        t.reads[i].len = take(&in, 2) % 8192;
        t.reads[i].base = exact(NULL, t.reads[i].len);
    }
    size_t piece = take(&in, 2) + 1;
    /* The stream, fed as TCP would: complete FPDUs are consumed, the rest carried over. */
    uint8_t *carry = NULL;
    size_t carried = 0;
    while (in.n) {
        size_t n = in.n < piece ? in.n : piece;
        uint8_t *buf = exact(NULL, carried + n);
        if (carried)
            memcpy(buf, carry, carried);
        memcpy(buf + carried, in.p, n);
        in.p += n;
        in.n -= n;
        free(carry);
        size_t len = carried + n;
        wire_record records[len / 24 + 1];
        wire_rx_result res;
        wire_rx(&st, &ops, &t, buf, len, records, len / 24 + 1, &res);
        assert(res.consumed <= len && res.stop != WIRE_STOP_FULL);
        for (size_t i = 0; i < res.records; i++)
            if (records[i].kind == WIRE_RECORD_READ)
                t.reads_done++;
        t.posted += res.receives_taken;
        if (res.stop == WIRE_STOP_FALLBACK) { /* the reference path would take over: stop here */
            free(buf);
            carry = NULL;
            break;
        }
        carried = len - res.consumed;
        carry = exact(buf + res.consumed, carried);
        free(buf);
    }
    free(carry);
    for (int i = 0; i < RECEIVES; i++)
        free(t.receives[i].base);
    for (int i = 0; i < REGIONS; i++)
        free(t.regions[i].span.base);
    for (int i = 0; i < READS; i++)
        free(t.reads[i].base);
    return 0;
}
