/* iWARP FPDUs (MPA framing around DDP/RDMAP segments): framing a batch of
 * work requests, and the receive fast path that parses every complete FPDU of
 * a TCP read and places its payload.  Plain C, no Python: fuzzed on its own.
 *
 * The receive path handles what is usual (Sends into posted receives, RDMA
 * Writes into registrations, Read Responses into outstanding reads) and stops
 * in front of anything else -- a Read Request, a Terminate, any fault -- for
 * the caller's reference path to decide.  It places bytes only inside a span
 * a callback handed it, after checking the bounds against that span. */
#ifndef SMBDIRECT_WIRE_FPDU_H
#define SMBDIRECT_WIRE_FPDU_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"

/* ---- framing ---------------------------------------------------------------- */

/* One work request to frame.  Untagged ops (the Send family) carry
 * word (the STag to invalidate, or 0) and msn; tagged ops (Write, Read
 * Response) carry stag and to. */
typedef struct {
    unsigned op;
    uint32_t word;
    uint32_t msn;
    uint32_t stag;
    uint64_t to;
    const uint8_t *data;
    size_t len;
} wire_request;

/* Bytes the FPDUs of one request take, with payload chunks of at most
 * `chunk` bytes (a multiple of 4, so only the last FPDU is padded). */
size_t wire_frame_size(const wire_request *r, size_t untagged_chunk, size_t tagged_chunk);

/* Frame one request into out[0, cap); returns the bytes written, or 0 if
 * cap is too small (nothing then is meaningful in out). */
size_t wire_frame(uint8_t *out, size_t cap, const wire_request *r, size_t untagged_chunk, size_t tagged_chunk,
                  int crc);

/* ---- receiving -------------------------------------------------------------- */

typedef struct {
    uint8_t *base;
    size_t len;
} wire_span;

typedef struct {
    uint32_t stag;
    uint32_t access; /* WIRE_ACCESS_* bits */
    uint64_t address;
    int valid;
    wire_span span; /* base may be NULL when the region is not writable */
} wire_region;

/* Where payloads may go; each returns 0, or -1 when there is no such target. */
typedef struct {
    /* The index-th posted receive, counting the one a message is in (if any) as 0. */
    int (*receive)(void *opaque, size_t index, wire_span *out);
    /* The registration whose index is stag >> 8 (its stag may differ: the core checks). */
    int (*region)(void *opaque, uint32_t stag, wire_region *out);
    /* The index-th outstanding RDMA read: its buffer and sink STag. */
    int (*read)(void *opaque, size_t index, wire_span *out, uint32_t *sink_stag);
    /* Invalidate stag (already checked valid by the core); 0 on success. */
    int (*invalidate)(void *opaque, uint32_t stag);
} wire_rx_ops;

/* State carried between calls, kept by the caller. */
typedef struct {
    int crc;
    uint32_t send_msn;   /* MSN the next Send segment must carry */
    int in_message;      /* receive 0 holds a message in progress */
    size_t recv_placed;  /* bytes placed in receive 0 */
    size_t read_placed;  /* bytes placed in the oldest outstanding read */
} wire_rx_state;

enum { WIRE_RECORD_RECV = 1, WIRE_RECORD_READ = 2 };
enum { WIRE_RECORD_SOLICITED = 1, WIRE_RECORD_INVALIDATED = 2 };

/* One finished message: a receive filled (in order) or a read completed (in order). */
typedef struct {
    uint8_t kind;
    uint8_t flags;
    uint32_t byte_len;
    uint32_t invalidated;
} wire_record;

/* Why a call returned. */
enum {
    WIRE_STOP_MORE = 0,     /* every complete FPDU was handled; the rest is a cut FPDU */
    WIRE_STOP_FALLBACK = 1, /* the FPDU at `consumed` is for the reference path */
    WIRE_STOP_FULL = 2,     /* the records array is full: call again from `consumed` */
};

typedef struct {
    size_t consumed;       /* bytes of the FPDUs handled */
    size_t fpdus;          /* FPDUs handled */
    size_t receives_taken; /* receives taken for new messages (finished or not) */
    size_t records;        /* records written */
    int stop;
} wire_rx_result;

void wire_rx(wire_rx_state *st, const wire_rx_ops *ops, void *opaque, uint8_t const *data, size_t len,
             wire_record *records, size_t max_records, wire_rx_result *res);

#endif
