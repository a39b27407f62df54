/* iWARP FPDU framing and the receive fast path; see fpdu.h. */
#include "fpdu.h"

#include <string.h>

#include "crc32c.h"

static inline void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static inline uint32_t get16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }

static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

static inline int is_tagged_op(unsigned op) { return op == WIRE_OP_WRITE || op == WIRE_OP_READ_RESPONSE; }

static inline int is_send_op(unsigned op) { return op >= WIRE_OP_SEND && op <= WIRE_OP_SEND_SE_INVALIDATE; }

/* Bytes of one FPDU carrying a ULPDU of `ulpdu` bytes: length, ULPDU, pad, CRC. */
static inline size_t fpdu_size(size_t ulpdu)
{
    return (ulpdu + WIRE_MPA_LENGTH_SIZE + 3) / 4 * 4 + WIRE_MPA_CRC_SIZE;
}

/* ---- framing ---------------------------------------------------------------- */

size_t wire_frame_size(const wire_request *r, size_t untagged_chunk, size_t tagged_chunk)
{
    int tagged = is_tagged_op(r->op);
    size_t header = tagged ? WIRE_TAGGED_HEADER_SIZE : WIRE_UNTAGGED_HEADER_SIZE;
    size_t chunk = tagged ? tagged_chunk : untagged_chunk;
    if (!chunk)
        return 0;
    size_t full = r->len / chunk, rest = r->len % chunk;
    size_t total = full * fpdu_size(header + chunk);
    if (rest || !r->len)
        total += fpdu_size(header + rest);
    return total;
}

size_t wire_frame(uint8_t *out, size_t cap, const wire_request *r, size_t untagged_chunk, size_t tagged_chunk,
                  int crc)
{
    int tagged = is_tagged_op(r->op);
    size_t header = tagged ? WIRE_TAGGED_HEADER_SIZE : WIRE_UNTAGGED_HEADER_SIZE;
    size_t chunk = tagged ? tagged_chunk : untagged_chunk;
    if (!chunk || chunk % 4 || header + chunk > 0xFFFF || wire_frame_size(r, untagged_chunk, tagged_chunk) > cap)
        return 0;
    uint8_t *p = out;
    size_t start = 0;
    do {
        size_t n = r->len - start < chunk ? r->len - start : chunk;
        int last = start + n >= r->len;
        uint32_t control = WIRE_DDP_VERSIONS | r->op | (last ? WIRE_DDP_LAST : 0);
        size_t ulpdu = header + n;
        uint8_t *fpdu = p;
        put16(p, (uint32_t)ulpdu);
        p += WIRE_MPA_LENGTH_SIZE;
        if (tagged) {
            put16(p + WIRE_TAGGED_CONTROL_OFFSET, control | WIRE_DDP_TAGGED);
            put32(p + WIRE_TAGGED_STAG_OFFSET, r->stag);
            put64(p + WIRE_TAGGED_OFFSET_OFFSET, r->to + start);
        } else {
            put16(p + WIRE_UNTAGGED_CONTROL_OFFSET, control);
            put32(p + WIRE_UNTAGGED_WORD_OFFSET, r->word);
            put32(p + WIRE_UNTAGGED_QUEUE_OFFSET, WIRE_QN_SEND);
            put32(p + WIRE_UNTAGGED_MSN_OFFSET, r->msn);
            put32(p + WIRE_UNTAGGED_MESSAGE_OFFSET_OFFSET, (uint32_t)start);
        }
        p += header;
        if (n)
            memcpy(p, r->data + start, n);
        p += n;
        while ((size_t)(p - fpdu) % 4)
            *p++ = 0;
        uint32_t value = crc ? wire_crc32c(0, fpdu, (size_t)(p - fpdu)) : 0;
        p[0] = (uint8_t)value; /* little-endian, as siw stores it */
        p[1] = (uint8_t)(value >> 8);
        p[2] = (uint8_t)(value >> 16);
        p[3] = (uint8_t)(value >> 24);
        p += WIRE_MPA_CRC_SIZE;
        start += n;
    } while (start < r->len);
    return (size_t)(p - out);
}

/* ---- receiving -------------------------------------------------------------- */

/* Per-call view of the receive being filled. */
typedef struct {
    wire_span span;
    int have_span;
    size_t base;  /* 1 if a message was in progress at the call's start */
    size_t taken; /* receives taken in this call */
    size_t reads; /* reads finished in this call */
    wire_span read_span;
    uint32_t read_sink;
    int have_read;
} rx_call;

/* The payload fits [placed, placed + n) of a span of len bytes. */
static inline int fits(size_t placed, size_t n, size_t len) { return placed <= len && n <= len - placed; }

/* A Send segment; returns 0 if handled, -1 to fall back (nothing changed). */
static int on_send(wire_rx_state *st, const wire_rx_ops *ops, void *opaque, rx_call *call, unsigned op, int last,
                   const uint8_t *h, const uint8_t *payload, size_t n, wire_record *record, int *recorded)
{
    if (get32(h + WIRE_UNTAGGED_MSN_OFFSET) != st->send_msn)
        return -1;
    size_t placed = st->in_message ? st->recv_placed : 0;
    if (get32(h + WIRE_UNTAGGED_MESSAGE_OFFSET_OFFSET) != placed)
        return -1;
    wire_span span;
    if (st->in_message && call->have_span) {
        span = call->span;
    } else {
        /* receive 0 is the one a message was in at the call's start, if any */
        size_t index = st->in_message ? 0 : call->base + call->taken;
        if (ops->receive(opaque, index, &span))
            return -1;
    }
    if (!fits(placed, n, span.len))
        return -1;
    uint32_t inval = get32(h + WIRE_UNTAGGED_WORD_OFFSET);
    int invalidate = last && (op == WIRE_OP_SEND_INVALIDATE || op == WIRE_OP_SEND_SE_INVALIDATE);
    if (invalidate) {
        wire_region region;
        if (ops->region(opaque, inval, &region) || region.stag != inval || !region.valid)
            return -1;
    }
    /* Committed from here: the reference path would accept this segment. */
    if (!st->in_message) {
        call->taken++;
        st->in_message = 1;
    }
    call->span = span;
    call->have_span = 1;
    if (n)
        memcpy(span.base + placed, payload, n);
    placed += n;
    st->recv_placed = placed;
    if (!last)
        return 0;
    if (invalidate && ops->invalidate(opaque, inval))
        return -1; /* cannot happen: checked above */
    st->in_message = 0;
    st->recv_placed = 0;
    call->have_span = 0;
    st->send_msn++;
    record->kind = WIRE_RECORD_RECV;
    record->flags = (uint8_t)((op == WIRE_OP_SEND_SE || op == WIRE_OP_SEND_SE_INVALIDATE ? WIRE_RECORD_SOLICITED : 0) |
                              (invalidate ? WIRE_RECORD_INVALIDATED : 0));
    record->byte_len = (uint32_t)placed;
    record->invalidated = invalidate ? inval : 0;
    *recorded = 1;
    return 0;
}

static int on_write(const wire_rx_ops *ops, void *opaque, const uint8_t *h, const uint8_t *payload, size_t n)
{
    if (!n)
        return 0; /* a zero-length Write (the RTR of peer-to-peer mode) touches nothing */
    uint32_t stag = get32(h + WIRE_TAGGED_STAG_OFFSET);
    uint64_t to = get64(h + WIRE_TAGGED_OFFSET_OFFSET);
    wire_region region;
    if (ops->region(opaque, stag, &region) || region.stag != stag || !region.valid)
        return -1;
    if (!(region.access & WIRE_ACCESS_REMOTE_WRITE) || !region.span.base)
        return -1;
    if (to < region.address)
        return -1;
    uint64_t start = to - region.address;
    if (start > region.span.len || n > region.span.len - start)
        return -1;
    memcpy(region.span.base + start, payload, n);
    return 0;
}

static int on_read_response(wire_rx_state *st, const wire_rx_ops *ops, void *opaque, rx_call *call, int last,
                            const uint8_t *h, const uint8_t *payload, size_t n, wire_record *record, int *recorded)
{
    if (!call->have_read) {
        if (ops->read(opaque, call->reads, &call->read_span, &call->read_sink))
            return -1;
        call->have_read = 1;
    }
    if (get32(h + WIRE_TAGGED_STAG_OFFSET) != call->read_sink)
        return -1;
    size_t placed = st->read_placed;
    if (get64(h + WIRE_TAGGED_OFFSET_OFFSET) != placed || !fits(placed, n, call->read_span.len))
        return -1;
    if (last && placed + n != call->read_span.len)
        return -1;
    if (n)
        memcpy(call->read_span.base + placed, payload, n);
    st->read_placed = placed + n;
    if (!last)
        return 0;
    record->kind = WIRE_RECORD_READ;
    record->flags = 0;
    record->byte_len = (uint32_t)(placed + n);
    record->invalidated = 0;
    *recorded = 1;
    st->read_placed = 0;
    call->reads++;
    call->have_read = 0;
    return 0;
}

void wire_rx(wire_rx_state *st, const wire_rx_ops *ops, void *opaque, const uint8_t *data, size_t len,
             wire_record *records, size_t max_records, wire_rx_result *res)
{
    rx_call call = {0};
    size_t off = 0;
    call.base = st->in_message ? 1 : 0;
    memset(res, 0, sizeof(*res));
    res->stop = WIRE_STOP_MORE;
    while (len - off >= WIRE_MPA_LENGTH_SIZE) {
        if (res->records == max_records) {
            res->stop = WIRE_STOP_FULL;
            break;
        }
        const uint8_t *fpdu = data + off;
        size_t ulpdu = get16(fpdu);
        size_t total = fpdu_size(ulpdu);
        if (len - off < total)
            break;
        res->stop = WIRE_STOP_FALLBACK; /* until this FPDU is handled */
        if (st->crc) {
            const uint8_t *c = fpdu + total - WIRE_MPA_CRC_SIZE;
            uint32_t expected = (uint32_t)c[0] | (uint32_t)c[1] << 8 | (uint32_t)c[2] << 16 | (uint32_t)c[3] << 24;
            if (wire_crc32c(0, fpdu, total - WIRE_MPA_CRC_SIZE) != expected)
                break;
        }
        if (ulpdu < 2)
            break;
        const uint8_t *h = fpdu + WIRE_MPA_LENGTH_SIZE;
        uint32_t control = get16(h);
        unsigned op = control & WIRE_DDP_OPCODE_MASK;
        int tagged = (control & WIRE_DDP_TAGGED) != 0;
        if ((control & WIRE_DDP_VERSION_MASK) != WIRE_DDP_VERSIONS || tagged != is_tagged_op(op))
            break;
        size_t header = tagged ? WIRE_TAGGED_HEADER_SIZE : WIRE_UNTAGGED_HEADER_SIZE;
        if (ulpdu < header)
            break;
        int last = (control & WIRE_DDP_LAST) != 0;
        const uint8_t *payload = h + header;
        size_t n = ulpdu - header;
        wire_record *record = &records[res->records];
        int recorded = 0, fault;
        if (is_send_op(op))
            fault = get32(h + WIRE_UNTAGGED_QUEUE_OFFSET) != WIRE_QN_SEND ||
                    on_send(st, ops, opaque, &call, op, last, h, payload, n, record, &recorded);
        else if (op == WIRE_OP_WRITE)
            fault = on_write(ops, opaque, h, payload, n);
        else if (op == WIRE_OP_READ_RESPONSE)
            fault = on_read_response(st, ops, opaque, &call, last, h, payload, n, record, &recorded);
        else
            fault = -1; /* Read Request, Terminate, unknown opcode */
        if (fault)
            break;
        res->records += (size_t)recorded;
        res->fpdus++;
        off += total;
        res->stop = WIRE_STOP_MORE;
    }
    res->consumed = off;
    res->receives_taken = call.taken;
}
