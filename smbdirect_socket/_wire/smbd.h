/* SMB-Direct data-transfer messages in batches ([MS-SMBD] 2.2.3): writing the
 * N fragments of one message into one buffer, and checking a batch of
 * received ones with the rules of the Python protocol, gathering payloads.
 * Plain C, no Python. */
#ifndef SMBDIRECT_WIRE_SMBD_H
#define SMBDIRECT_WIRE_SMBD_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"

/* Bytes that `count` fragments of data[start, len) take, `chunk` data bytes each. */
size_t wire_smbd_encoded_size(size_t len, size_t start, size_t count, size_t chunk);

/* Write them: the first grants `granted` credits, the rest 0; each carries the
 * bytes of the message left after it.  Returns the bytes written, or 0 if cap
 * is too small or the arguments are out of range. */
size_t wire_smbd_encode(uint8_t *out, size_t cap, uint16_t requested, uint16_t granted, uint16_t flags,
                        const uint8_t *data, size_t len, size_t start, size_t count, size_t chunk);

typedef struct {
    uint64_t granted;           /* credits granted to the peer and not yet used */
    uint64_t send_credits;      /* credits the peer granted us */
    uint64_t message_remaining; /* bytes due to finish the message being reassembled */
    uint64_t receive_target;
    int response_requested;
    uint64_t fragments, messages, bytes;
} wire_smbd_state;

typedef struct {
    uint64_t max_fragmented_size, max_receive_size, recv_credit_max;
} wire_smbd_limits;

typedef struct {
    const uint8_t *base;
    size_t len;
} wire_cspan;

/* One payload: its length, the message's total if it starts one (else 0), and
 * where it is: the index of its message in the batch and its offset there. */
typedef struct {
    uint32_t length;
    uint32_t offset;
    uint64_t total;
    size_t index;
} wire_piece;

typedef struct {
    int code;          /* WIRE_SMBD_* (WIRE_SMBD_OK: no fault) */
    size_t index;      /* the message at fault */
    uint64_t values[3]; /* the numbers the error names */
} wire_smbd_fault;

/* Check pdus[0, n) in order, applying each to st and gathering its payload
 * into out; stops at the first fault (the messages before it applied).
 * pieces has room for n.  Returns the messages applied; *gathered the bytes
 * written to out, *npieces the pieces.  A payload that does not fit out is a
 * fault of code WIRE_SMBD_LENGTH with values {needed, cap, 1}.  With out NULL
 * nothing is gathered (*gathered stays 0): the pieces say where each payload
 * lies in its message, for a caller that keeps them in place. */
size_t wire_smbd_check(wire_smbd_state *st, const wire_smbd_limits *limits, const wire_cspan *pdus, size_t n,
                       uint8_t *out, size_t cap, size_t *gathered, wire_piece *pieces, size_t *npieces,
                       wire_smbd_fault *fault);

#endif
