/* SMB-Direct data-transfer batches; see smbd.h.  The order of the checks is
 * the Python protocol's, so the first fault found is the same. */
#include "smbd.h"

#include <string.h>

static inline uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void put_le16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void put_le32(uint8_t *p, uint32_t v)
{
    put_le16(p, v);
    put_le16(p + 2, v >> 16);
}

size_t wire_smbd_encoded_size(size_t len, size_t start, size_t count, size_t chunk)
{
    if (start > len || !chunk)
        return 0;
    size_t rest = len - start, total = 0;
    for (size_t i = 0; i < count && rest; i++) {
        size_t n = rest < chunk ? rest : chunk;
        total += WIRE_DATA_TRANSFER_DATA_OFFSET + n;
        rest -= n;
    }
    return total;
}

size_t wire_smbd_encode(uint8_t *out, size_t cap, uint16_t requested, uint16_t granted, uint16_t flags,
                        const uint8_t *data, size_t len, size_t start, size_t count, size_t chunk)
{
    if (!chunk || start > len || len - start > 0xFFFFFFFFu || !count ||
        wire_smbd_encoded_size(len, start, count, chunk) > cap)
        return 0;
    uint8_t *p = out;
    for (size_t i = 0; i < count && start < len; i++) {
        size_t n = len - start < chunk ? len - start : chunk;
        memset(p, 0, WIRE_DATA_TRANSFER_DATA_OFFSET);
        put_le16(p + WIRE_DATA_TRANSFER_MESSAGE_CREDITS_REQUESTED_OFFSET, requested);
        put_le16(p + WIRE_DATA_TRANSFER_MESSAGE_CREDITS_GRANTED_OFFSET, i ? 0 : granted);
        put_le16(p + WIRE_DATA_TRANSFER_MESSAGE_FLAGS_OFFSET, flags);
        put_le32(p + WIRE_DATA_TRANSFER_MESSAGE_REMAINING_DATA_LENGTH_OFFSET, (uint32_t)(len - start - n));
        put_le32(p + WIRE_DATA_TRANSFER_MESSAGE_DATA_OFFSET_OFFSET, WIRE_DATA_TRANSFER_DATA_OFFSET);
        put_le32(p + WIRE_DATA_TRANSFER_MESSAGE_DATA_LENGTH_OFFSET, (uint32_t)n);
        memcpy(p + WIRE_DATA_TRANSFER_DATA_OFFSET, data + start, n);
        p += WIRE_DATA_TRANSFER_DATA_OFFSET + n;
        start += n;
    }
    return (size_t)(p - out);
}

static size_t fail(wire_smbd_fault *fault, int code, size_t index, uint64_t a, uint64_t b, uint64_t c)
{
    fault->code = code;
    fault->index = index;
    fault->values[0] = a;
    fault->values[1] = b;
    fault->values[2] = c;
    return index;
}

size_t wire_smbd_check(wire_smbd_state *st, const wire_smbd_limits *limits, const wire_cspan *pdus, size_t n,
                       uint8_t *out, size_t cap, size_t *gathered, wire_piece *pieces, size_t *npieces,
                       wire_smbd_fault *fault)
{
    *gathered = 0;
    *npieces = 0;
    memset(fault, 0, sizeof(*fault));
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = pdus[i].base;
        size_t size = pdus[i].len;
        /* the structure (PDUError) */
        if (size < WIRE_DATA_TRANSFER_MESSAGE_SIZE)
            return fail(fault, WIRE_SMBD_LENGTH, i, size, WIRE_DATA_TRANSFER_MESSAGE_SIZE, 0);
        uint32_t requested = le16(p + WIRE_DATA_TRANSFER_MESSAGE_CREDITS_REQUESTED_OFFSET);
        uint32_t granted = le16(p + WIRE_DATA_TRANSFER_MESSAGE_CREDITS_GRANTED_OFFSET);
        uint32_t flags = le16(p + WIRE_DATA_TRANSFER_MESSAGE_FLAGS_OFFSET);
        uint64_t remaining = le32(p + WIRE_DATA_TRANSFER_MESSAGE_REMAINING_DATA_LENGTH_OFFSET);
        uint64_t offset = le32(p + WIRE_DATA_TRANSFER_MESSAGE_DATA_OFFSET_OFFSET);
        uint64_t length = le32(p + WIRE_DATA_TRANSFER_MESSAGE_DATA_LENGTH_OFFSET);
        if (offset % 8)
            return fail(fault, WIRE_SMBD_DATA_OFFSET_ALIGNMENT, i, offset, 0, 0);
        if (length) {
            if (offset < WIRE_DATA_TRANSFER_MESSAGE_SIZE)
                return fail(fault, WIRE_SMBD_DATA_OFFSET_OVERLAP, i, offset, 0, 0);
            if (offset + length > size)
                return fail(fault, WIRE_SMBD_DATA_LENGTH, i, offset, length, size);
        }
        /* the protocol's rules (RemoteProtocolError) */
        if (st->granted == 0)
            return fail(fault, WIRE_SMBD_NO_CREDIT, i, 0, 0, 0);
        st->granted--;
        if (requested == 0)
            return fail(fault, WIRE_SMBD_CREDITS_REQUESTED, i, 0, 0, 0);
        uint64_t total = length + remaining;
        if (total > limits->max_fragmented_size)
            return fail(fault, WIRE_SMBD_MESSAGE_SIZE, i, total, limits->max_fragmented_size, 0);
        if (size > limits->max_receive_size)
            return fail(fault, WIRE_SMBD_RECEIVE_SIZE, i, size, limits->max_receive_size, 0);
        uint64_t target = requested < limits->recv_credit_max ? requested : limits->recv_credit_max;
        st->receive_target = target ? target : 1;
        st->send_credits += granted;
        if (st->send_credits > 0xFFFF)
            return fail(fault, WIRE_SMBD_CREDITS_GRANTED, i, st->send_credits, 0, 0);
        if (flags & WIRE_SMB_DIRECT_RESPONSE_REQUESTED)
            st->response_requested = 1;
        st->fragments++;
        if (!length)
            continue;
        uint64_t starts = 0;
        if (st->message_remaining) {
            if (total != st->message_remaining)
                return fail(fault, WIRE_SMBD_CONTINUATION, i, remaining, length, st->message_remaining);
        } else {
            starts = total;
        }
        if (out) {
            if (length > cap - *gathered)
                return fail(fault, WIRE_SMBD_LENGTH, i, *gathered + length, cap, 1);
            memcpy(out + *gathered, p + offset, (size_t)length);
            *gathered += (size_t)length;
        }
        if (!st->message_remaining)
            st->messages++;
        pieces[*npieces].length = (uint32_t)length;
        pieces[*npieces].total = starts;
        pieces[*npieces].index = i;
        pieces[*npieces].offset = (uint32_t)offset;
        (*npieces)++;
        st->message_remaining = remaining;
        st->bytes += length;
    }
    return n;
}
