/* The data-transfer batch check: the input is cut into messages (a length
 * byte, then that many bytes), gathered into a buffer of exactly their size
 * (or half of it), or located in place with nothing gathered. */
#include <assert.h>

#include "../smbdirect_socket/_wire/smbd.h"
#include "common.h"

#define MAX_PDUS 32

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input in = {data, size};
    wire_smbd_state st = {0};
    wire_smbd_limits limits;
    st.granted = take(&in, 1);
    st.send_credits = take(&in, 2);
    st.message_remaining = take(&in, 2);
    limits.max_fragmented_size = take(&in, 3);
    limits.max_receive_size = take(&in, 2);
    limits.recv_credit_max = take(&in, 1);
    /* bit 0: a buffer for every payload (else half); bit 1: nothing gathered */
    unsigned mode = take(&in, 1);
    wire_cspan pdus[MAX_PDUS];
    size_t n = 0, total = 0;
    while (in.n && n < MAX_PDUS) {
        size_t len = take(&in, 1);
        len = len < in.n ? len : in.n;
        pdus[n].base = exact(in.p, len);
        pdus[n].len = len;
        total += len;
        in.p += len;
        in.n -= len;
        n++;
    }
    size_t cap = mode & 1 ? total : total / 2;
    uint8_t *out = mode & 2 ? NULL : exact(NULL, cap);
    wire_piece pieces[MAX_PDUS];
    size_t gathered, npieces;
    wire_smbd_fault fault;
    size_t applied = wire_smbd_check(&st, &limits, pdus, n, out, cap, &gathered, pieces, &npieces, &fault);
    assert(applied <= n && gathered <= cap && npieces <= applied);
    assert((fault.code == WIRE_SMBD_OK) == (applied == n));
    for (size_t i = 0; i < npieces; i++) /* each piece lies inside its message */
        assert(pieces[i].index < applied && (size_t)pieces[i].offset + pieces[i].length <= pdus[pieces[i].index].len);
    if (!out)
        assert(gathered == 0);
    for (size_t i = 0; i < n; i++)
        free((void *)pdus[i].base);
    free(out);
    return 0;
}
