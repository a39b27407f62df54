/* Frame then parse: the input picks requests (Sends and Writes) and the FPDU
 * size; every one must come back whole, in order, byte for byte.  Then the
 * same for SMB-Direct: encode a message's fragments and check them. */
#include <assert.h>

#include "../smbdirect_socket/_wire/fpdu.h"
#include "../smbdirect_socket/_wire/smbd.h"
#include "common.h"

typedef struct {
    wire_span *receives;
    size_t n, taken;
    wire_region region;
} sink;

static int receive(void *opaque, size_t index, wire_span *out)
{
    sink *s = opaque;
    if (s->taken + index >= s->n)
        return -1;
    *out = s->receives[s->taken + index];
    return 0;
}

static int region(void *opaque, uint32_t stag, wire_region *out)
{
    sink *s = opaque;
    if (stag >> 8 != s->region.stag >> 8)
        return -1;
    *out = s->region;
    return 0;
}

static int no_read(void *opaque, size_t index, wire_span *out, uint32_t *sink_stag)
{
    (void)opaque, (void)index, (void)out, (void)sink_stag;
    return -1;
}

static int no_invalidate(void *opaque, uint32_t stag)
{
    (void)opaque, (void)stag;
    return -1;
}

static const wire_rx_ops ops = {receive, region, no_read, no_invalidate};

#define REQUESTS 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input in = {data, size};
    int crc = take(&in, 1) & 1;
    size_t chunk = (take(&in, 2) % 2000 + 4) & ~(size_t)3;
    wire_request requests[REQUESTS];
    wire_span receives[REQUESTS];
    size_t n = 0, sends = 0, framed = 0;
    uint8_t region_memory[4096];
    sink s = {receives, 0, 0, {0x100 | 7, WIRE_ACCESS_REMOTE_WRITE, 0x1000, 1, {region_memory, sizeof region_memory}}};
    while (in.n && n < REQUESTS) {
        wire_request *r = &requests[n];
        memset(r, 0, sizeof(*r));
        r->len = take(&in, 2) % 3000;
        r->len = r->len < in.n ? r->len : in.n;
        r->data = in.p;
        in.p += r->len;
        in.n -= r->len;
        if (r->len && r->len % 2 && r->len <= sizeof region_memory) {
            r->op = WIRE_OP_WRITE;
            r->stag = s.region.stag;
            r->to = s.region.address;
        } else {
            r->op = WIRE_OP_SEND;
            r->msn = (uint32_t)++sends;
            receives[s.n].len = r->len;
            receives[s.n].base = exact(NULL, r->len);
            s.n++;
        }
        framed += wire_frame_size(r, chunk, chunk);
        n++;
    }
    uint8_t *wire = exact(NULL, framed);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = wire_frame(wire + at, framed - at, &requests[i], chunk, chunk, crc);
        assert(k == wire_frame_size(&requests[i], chunk, chunk));
        at += k;
    }
    wire_rx_state st = {crc, 1, 0, 0, 0};
    wire_record records[framed / 24 + 1];
    wire_rx_result res;
    wire_rx(&st, &ops, &s, wire, framed, records, framed / 24 + 1, &res);
    assert(res.stop == WIRE_STOP_MORE && res.consumed == framed && res.records == sends);
    for (size_t i = 0, k = 0; i < n; i++) {
        if (requests[i].op != WIRE_OP_SEND)
            continue;
        assert(records[k].byte_len == requests[i].len);
        assert(!requests[i].len || !memcmp(receives[k].base, requests[i].data, requests[i].len));
        k++;
    }
    for (size_t i = 0; i < s.n; i++)
        free(receives[i].base);
    free(wire);

    /* SMB-Direct: the fragments of one message. */
    size_t len = size, smbd_chunk = chunk + 1, count = (len + smbd_chunk - 1) / smbd_chunk;
    if (!len)
        return 0;
    size_t encoded = wire_smbd_encoded_size(len, 0, count, smbd_chunk);
    uint8_t *buf = exact(NULL, encoded);
    assert(wire_smbd_encode(buf, encoded, 10, 3, 0, data, len, 0, count, smbd_chunk) == encoded);
    wire_cspan pdus[count];
    size_t off = 0;
    for (size_t i = 0; i < count; i++) {
        size_t k = len - i * smbd_chunk < smbd_chunk ? len - i * smbd_chunk : smbd_chunk;
        pdus[i].base = buf + off;
        pdus[i].len = WIRE_DATA_TRANSFER_DATA_OFFSET + k;
        off += pdus[i].len;
    }
    wire_smbd_state st2 = {count, 0, 0, 0, 0, 0, 0, 0};
    wire_smbd_limits limits = {len, smbd_chunk + WIRE_DATA_TRANSFER_DATA_OFFSET, 255};
    uint8_t *out = exact(NULL, len);
    wire_piece pieces[count];
    size_t gathered, npieces;
    wire_smbd_fault fault;
    assert(wire_smbd_check(&st2, &limits, pdus, count, out, len, &gathered, pieces, &npieces, &fault) == count);
    assert(gathered == len && !memcmp(out, data, len) && st2.messages == 1 && st2.send_credits == 3);
    free(out);
    free(buf);
    return 0;
}
