/* The thin CPython binding of the wire core: buffers and tuples in, bytes and
 * tuples out.  Every check and every placement is the core's (fpdu.c); this
 * file only finds the buffers the Python objects name. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "crc32c.h"
#include "fpdu.h"
#include "smbd.h"

/* ---- CRC32C ------------------------------------------------------------------- */

static PyObject *py_crc32c(PyObject *self, PyObject *args)
{
    Py_buffer data;
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &data, &crc))
        return NULL;
    uint32_t value;
    Py_BEGIN_ALLOW_THREADS;
    value = wire_crc32c(crc, data.buf, (size_t)data.len);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(value);
}

static PyObject *py_crc32c_table(PyObject *self, PyObject *args)
{
    Py_buffer data;
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &data, &crc))
        return NULL;
    uint32_t value = wire_crc32c_table(crc, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(value);
}

static PyObject *py_crc32c_hardware(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(wire_crc32c_hardware());
}

/* ---- framing ------------------------------------------------------------------ */

/* requests: a sequence of (op, word_or_stag, msn_or_to, data) */
static PyObject *py_frame(PyObject *self, PyObject *args)
{
    PyObject *seq;
    Py_ssize_t untagged_chunk, tagged_chunk;
    int crc;
    if (!PyArg_ParseTuple(args, "Onnp", &seq, &untagged_chunk, &tagged_chunk, &crc))
        return NULL;
    if (untagged_chunk <= 0 || tagged_chunk <= 0 || untagged_chunk % 4 || tagged_chunk % 4 ||
        untagged_chunk + WIRE_UNTAGGED_HEADER_SIZE > 0xFFFF || tagged_chunk + WIRE_TAGGED_HEADER_SIZE > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "chunk sizes must be positive multiples of 4 that fit an FPDU");
        return NULL;
    }
    PyObject *fast = PySequence_Fast(seq, "requests must be a sequence");
    if (!fast)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    PyObject *result = NULL, *ends = NULL, *out = NULL;
    Py_buffer *views = PyMem_Calloc((size_t)count + 1, sizeof(Py_buffer));
    wire_request *requests = PyMem_Calloc((size_t)count + 1, sizeof(wire_request));
    Py_ssize_t held = 0;
    if (!views || !requests) {
        PyErr_NoMemory();
        goto done;
    }
    size_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        unsigned int op;
        unsigned long long a, b;
        if (!PyArg_ParseTuple(item, "IKKy*;a request is (op, word or stag, msn or offset, data)", &op, &a, &b,
                              &views[i]))
            goto done;
        held++;
        wire_request *r = &requests[i];
        if (op > WIRE_OP_TERMINATE || op == WIRE_OP_READ_REQUEST || op == WIRE_OP_TERMINATE || a > 0xFFFFFFFFu) {
            PyErr_Format(PyExc_ValueError, "cannot frame opcode %u with word 0x%llx", op, a);
            goto done;
        }
        r->op = op;
        r->data = views[i].buf;
        r->len = (size_t)views[i].len;
        if (op == WIRE_OP_WRITE || op == WIRE_OP_READ_RESPONSE) {
            r->stag = (uint32_t)a;
            r->to = b;
        } else {
            if (b > 0xFFFFFFFFu || r->len > 0xFFFFFFFFu) {
                PyErr_SetString(PyExc_ValueError, "MSN and message length must fit 32 bits");
                goto done;
            }
            r->word = (uint32_t)a;
            r->msn = (uint32_t)b;
        }
        total += wire_frame_size(r, (size_t)untagged_chunk, (size_t)tagged_chunk);
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    ends = PyList_New(count);
    if (!out || !ends)
        goto done;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    size_t at = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        size_t n = wire_frame(p + at, total - at, &requests[i], (size_t)untagged_chunk, (size_t)tagged_chunk, crc);
        if (!n && requests[i].len) {
            PyErr_SetString(PyExc_SystemError, "framing overran its buffer");
            goto done;
        }
        at += n;
        PyObject *end = PyLong_FromSize_t(at);
        if (!end)
            goto done;
        PyList_SET_ITEM(ends, i, end);
    }
    result = PyTuple_Pack(2, out, ends);
done:
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(requests);
    Py_XDECREF(out);
    Py_XDECREF(ends);
    Py_DECREF(fast);
    return result;
}

/* frame_one(op, word_or_stag, msn_or_to, data, untagged_chunk, tagged_chunk, crc) -> bytes:
 * one request, the per-message hot path (no sequence, no list). */
static PyObject *py_frame_one(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "frame_one takes 7 arguments");
        return NULL;
    }
    unsigned long op = PyLong_AsUnsignedLong(args[0]);
    unsigned long long a = PyLong_AsUnsignedLongLong(args[1]);
    unsigned long long b = PyLong_AsUnsignedLongLong(args[2]);
    Py_ssize_t untagged_chunk = PyLong_AsSsize_t(args[4]), tagged_chunk = PyLong_AsSsize_t(args[5]);
    int crc = PyObject_IsTrue(args[6]);
    if (PyErr_Occurred())
        return NULL;
    if (op > WIRE_OP_TERMINATE || op == WIRE_OP_READ_REQUEST || op == WIRE_OP_TERMINATE || a > 0xFFFFFFFFu ||
        untagged_chunk <= 0 || tagged_chunk <= 0 || untagged_chunk % 4 || tagged_chunk % 4 ||
        untagged_chunk + WIRE_UNTAGGED_HEADER_SIZE > 0xFFFF || tagged_chunk + WIRE_TAGGED_HEADER_SIZE > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "cannot frame this request");
        return NULL;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[3], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    wire_request r = {0};
    r.op = (unsigned)op;
    r.data = data.buf;
    r.len = (size_t)data.len;
    PyObject *out = NULL;
    if (op == WIRE_OP_WRITE || op == WIRE_OP_READ_RESPONSE) {
        r.stag = (uint32_t)a;
        r.to = b;
    } else if (b > 0xFFFFFFFFu || r.len > 0xFFFFFFFFu) {
        PyErr_SetString(PyExc_ValueError, "MSN and message length must fit 32 bits");
        goto done;
    } else {
        r.word = (uint32_t)a;
        r.msn = (uint32_t)b;
    }
    size_t size = wire_frame_size(&r, (size_t)untagged_chunk, (size_t)tagged_chunk);
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (out && wire_frame((uint8_t *)PyBytes_AS_STRING(out), size, &r, (size_t)untagged_chunk, (size_t)tagged_chunk,
                          crc) != size) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_SystemError, "framing overran its buffer");
    }
done:
    PyBuffer_Release(&data);
    return out;
}

/* frame_sends(msn, datas, untagged_chunk, crc) -> bytes: plain Sends of a list of
 * messages with consecutive MSNs from msn, all in one buffer (one message's
 * SMB-Direct fragments: one call and one write for the lot). */
static PyObject *py_frame_sends(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "frame_sends takes 4 arguments");
        return NULL;
    }
    unsigned long long msn = PyLong_AsUnsignedLongLong(args[0]);
    Py_ssize_t chunk = PyLong_AsSsize_t(args[2]);
    int crc = PyObject_IsTrue(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (chunk <= 0 || chunk % 4 || chunk + WIRE_UNTAGGED_HEADER_SIZE > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "the chunk size must be a positive multiple of 4 that fits an FPDU");
        return NULL;
    }
    if (!PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "datas must be a list");
        return NULL;
    }
    PyObject *list = args[1];
    Py_ssize_t count = PyList_GET_SIZE(list);
    if (msn > 0xFFFFFFFFull || (unsigned long long)count > 0xFFFFFFFFull - msn + 1) {
        PyErr_SetString(PyExc_ValueError, "MSNs must fit 32 bits");
        return NULL;
    }
    PyObject *out = NULL;
    Py_buffer *views = PyMem_Calloc((size_t)count + 1, sizeof(Py_buffer));
    Py_ssize_t held = 0;
    if (!views) {
        PyErr_NoMemory();
        return NULL;
    }
    wire_request r = {0};
    r.op = WIRE_OP_SEND;
    size_t total = 0;
    for (; held < count; held++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(list, held), &views[held], PyBUF_SIMPLE) < 0)
            goto done;
        if ((size_t)views[held].len > 0xFFFFFFFFu) {
            held++;
            PyErr_SetString(PyExc_ValueError, "a message's length must fit 32 bits");
            goto done;
        }
        r.len = (size_t)views[held].len;
        total += wire_frame_size(&r, (size_t)chunk, 4);
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!out)
        goto done;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    size_t at = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        r.msn = (uint32_t)(msn + (unsigned long long)i);
        r.data = views[i].buf;
        r.len = (size_t)views[i].len;
        size_t size = wire_frame_size(&r, (size_t)chunk, 4);
        if (wire_frame(p + at, total - at, &r, (size_t)chunk, 4, crc) != size) {
            Py_CLEAR(out);
            PyErr_SetString(PyExc_SystemError, "framing overran its buffer");
            goto done;
        }
        at += size;
    }
done:
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    return out;
}

/* ---- receiving ---------------------------------------------------------------- */

typedef struct {
    PyObject *current;  /* the receive a message is in, or None */
    PyObject *receives; /* deque of posted receives: (wr_id, buffer) */
    PyObject *regions;  /* dict: stag >> 8 -> region (.token .access .address ._valid .buffer) */
    PyObject *reads;    /* deque of outstanding reads (.into .sink_token) */
    PyObject *memory;   /* has .invalidate(stag) */
    Py_buffer *held;
    size_t nheld, cap;
    int failed;         /* a Python error is set */
} rx_context;

static PyObject *s_buffer, *s_token, *s_access, *s_address, *s_valid, *s_into, *s_sink_token, *s_invalidate;

static int hold(rx_context *c, PyObject *obj, int writable, wire_span *out)
{
    if (c->nheld == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        Py_buffer *held = PyMem_Realloc(c->held, cap * sizeof(Py_buffer));
        if (!held) {
            PyErr_NoMemory();
            return -1;
        }
        c->held = held;
        c->cap = cap;
    }
    Py_buffer *view = &c->held[c->nheld];
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
        return -1;
    c->nheld++;
    out->base = view->buf;
    out->len = (size_t)view->len;
    return 0;
}

static int attr_span(rx_context *c, PyObject *obj, PyObject *name, wire_span *out)
{
    PyObject *buffer = PyObject_GetAttr(obj, name);
    if (!buffer)
        return -1;
    int rc = hold(c, buffer, 1, out);
    Py_DECREF(buffer);
    return rc;
}

/* A posted receive is the tuple (wr_id, buffer). */
static int check_receive(PyObject *item)
{
    if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 2)
        return 0;
    PyErr_SetString(PyExc_TypeError, "a posted receive is a tuple (wr_id, buffer)");
    return -1;
}

static int receive_span(rx_context *c, PyObject *item, wire_span *out)
{
    return check_receive(item) < 0 ? -1 : hold(c, PyTuple_GET_ITEM(item, 1), 1, out);
}

static int cb_receive(void *opaque, size_t index, wire_span *out)
{
    rx_context *c = opaque;
    PyObject *item;
    if (c->current != Py_None) {
        if (index == 0) {
            item = c->current;
            Py_INCREF(item);
        } else {
            index--;
            goto posted;
        }
    } else {
    posted:
        if ((Py_ssize_t)index >= PySequence_Size(c->receives))
            return -1;
        item = PySequence_GetItem(c->receives, (Py_ssize_t)index);
        if (!item)
            goto fail;
    }
    int rc = receive_span(c, item, out);
    Py_DECREF(item);
    if (rc == 0)
        return 0;
fail:
    c->failed = 1;
    return -1;
}

static int get_u64(PyObject *obj, PyObject *name, unsigned long long *out)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (!value)
        return -1;
    *out = PyLong_AsUnsignedLongLong(value);
    Py_DECREF(value);
    return *out == (unsigned long long)-1 && PyErr_Occurred() ? -1 : 0;
}

static int cb_region(void *opaque, uint32_t stag, wire_region *out)
{
    rx_context *c = opaque;
    PyObject *key = PyLong_FromUnsignedLong(stag >> 8);
    if (!key)
        goto fail;
    PyObject *region = PyDict_GetItemWithError(c->regions, key); /* borrowed */
    Py_DECREF(key);
    if (!region)
        return PyErr_Occurred() ? (c->failed = 1, -1) : -1;
    unsigned long long token, access, address, valid;
    if (get_u64(region, s_token, &token) || get_u64(region, s_access, &access) ||
        get_u64(region, s_address, &address) || get_u64(region, s_valid, &valid))
        goto fail;
    out->stag = (uint32_t)token;
    out->access = (uint32_t)access;
    out->address = address;
    out->valid = valid != 0;
    out->span.base = NULL;
    out->span.len = 0;
    if (access & WIRE_ACCESS_REMOTE_WRITE && attr_span(c, region, s_buffer, &out->span))
        goto fail;
    return 0;
fail:
    c->failed = 1;
    return -1;
}

static int cb_read(void *opaque, size_t index, wire_span *out, uint32_t *sink_stag)
{
    rx_context *c = opaque;
    if ((Py_ssize_t)index >= PySequence_Size(c->reads))
        return -1;
    PyObject *read = PySequence_GetItem(c->reads, (Py_ssize_t)index);
    if (!read)
        goto fail;
    unsigned long long sink;
    int rc = get_u64(read, s_sink_token, &sink) || attr_span(c, read, s_into, out);
    Py_DECREF(read);
    if (rc)
        goto fail;
    *sink_stag = (uint32_t)sink;
    return 0;
fail:
    c->failed = 1;
    return -1;
}

static int cb_invalidate(void *opaque, uint32_t stag)
{
    rx_context *c = opaque;
    PyObject *token = PyLong_FromUnsignedLong(stag);
    PyObject *result = token ? PyObject_CallMethodObjArgs(c->memory, s_invalidate, token, NULL) : NULL;
    Py_XDECREF(token);
    if (!result) {
        c->failed = 1;
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

static const wire_rx_ops rx_ops = {cb_receive, cb_region, cb_read, cb_invalidate};

/* A Completion (a named tuple) of its seven fields, as tuple.__new__ would make it. */
static PyObject *completion(PyTypeObject *type, PyObject *wr_id, PyObject *opcode, PyObject *status, uint32_t byte_len,
                            PyObject *invalidated, int solicited)
{
    PyObject *length = PyLong_FromUnsignedLong(byte_len);
    PyObject *t = length ? type->tp_alloc(type, 7) : NULL;
    if (!t) {
        Py_XDECREF(length);
        Py_XDECREF(invalidated);
        return NULL;
    }
    PyObject *reason = PyUnicode_New(0, 0);
    if (!reason) {
        Py_DECREF(t);
        Py_DECREF(length);
        Py_XDECREF(invalidated);
        return NULL;
    }
    Py_INCREF(wr_id);
    Py_INCREF(opcode);
    Py_INCREF(status);
    if (!invalidated) {
        invalidated = Py_None;
        Py_INCREF(invalidated);
    }
    PyObject *flag = solicited ? Py_True : Py_False;
    Py_INCREF(flag);
    PyTuple_SET_ITEM(t, 0, wr_id);
    PyTuple_SET_ITEM(t, 1, opcode);
    PyTuple_SET_ITEM(t, 2, status);
    PyTuple_SET_ITEM(t, 3, length);
    PyTuple_SET_ITEM(t, 4, invalidated);
    PyTuple_SET_ITEM(t, 5, flag);
    PyTuple_SET_ITEM(t, 6, reason);
    return t;
}

static PyObject *s_popleft, *s_wr_id, *s_rtr, *s_append;

/* Turn the records of one core call into completions, in order: the receives
 * they filled (current first, then `taken` popped from receives) and the reads
 * they finished (popped from reads).  Returns the receive a message is still
 * in (new reference; None if none), or NULL with an error set. */
static PyObject *complete(const wire_record *records, size_t count, size_t taken, int in_message, PyObject *current,
                          PyObject *receives, PyObject *reads, PyObject *completions, PyObject *kinds)
{
    PyTypeObject *type;
    PyObject *recv_op, *read_op, *success;
    if (!PyArg_ParseTuple(kinds, "O!OOO;kinds is (Completion, RECV, RDMA_READ, SUCCESS)", &PyType_Type, &type,
                          &recv_op, &read_op, &success))
        return NULL;
    if (!PyType_IsSubtype(type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "Completion must be a tuple type");
        return NULL;
    }
    PyObject *append = PyObject_GetAttr(completions, s_append);
    if (!append)
        return NULL;
    PyObject *filled = PyList_New(0), *result = NULL;
    if (!filled) {
        Py_DECREF(append);
        return NULL;
    }
    if (current != Py_None && PyList_Append(filled, current) < 0)
        goto done;
    for (size_t i = 0; i < taken; i++) {
        PyObject *item = PyObject_CallMethodNoArgs(receives, s_popleft);
        if (!item || PyList_Append(filled, item) < 0) {
            Py_XDECREF(item);
            goto done;
        }
        Py_DECREF(item);
    }
    Py_ssize_t index = 0;
    for (size_t i = 0; i < count; i++) {
        const wire_record *r = &records[i];
        PyObject *done_one = NULL;
        if (r->kind == WIRE_RECORD_RECV) {
            if (index >= PyList_GET_SIZE(filled)) {
                PyErr_SetString(PyExc_SystemError, "wire core: a record without its receive");
                goto done;
            }
            PyObject *receive = PyList_GET_ITEM(filled, index++);
            if (check_receive(receive) < 0)
                goto done;
            PyObject *wr_id = PyTuple_GET_ITEM(receive, 0);
            Py_INCREF(wr_id);
            PyObject *invalidated = NULL;
            if (r->flags & WIRE_RECORD_INVALIDATED && !(invalidated = PyLong_FromUnsignedLong(r->invalidated))) {
                Py_DECREF(wr_id);
                goto done;
            }
            done_one = completion(type, wr_id, recv_op, success, r->byte_len, invalidated,
                                  r->flags & WIRE_RECORD_SOLICITED);
            Py_DECREF(wr_id);
        } else {
            PyObject *read = PyObject_CallMethodNoArgs(reads, s_popleft);
            if (!read)
                goto done;
            PyObject *rtr = PyObject_GetAttr(read, s_rtr);
            int skip = rtr ? PyObject_IsTrue(rtr) : -1;
            Py_XDECREF(rtr);
            PyObject *wr_id = skip == 0 ? PyObject_GetAttr(read, s_wr_id) : NULL;
            Py_DECREF(read);
            if (skip < 0 || (skip == 0 && !wr_id))
                goto done;
            if (skip)
                continue; /* the ready-to-receive read of MPA peer-to-peer mode completes nothing */
            done_one = completion(type, wr_id, read_op, success, r->byte_len, NULL, 0);
            Py_DECREF(wr_id);
        }
        if (!done_one)
            goto done;
        PyObject *appended = PyObject_CallOneArg(append, done_one);
        Py_DECREF(done_one);
        if (!appended)
            goto done;
        Py_DECREF(appended);
    }
    if (in_message) {
        if (index >= PyList_GET_SIZE(filled)) {
            PyErr_SetString(PyExc_SystemError, "wire core: a message in progress without its receive");
            goto done;
        }
        result = PyList_GET_ITEM(filled, index);
    } else {
        result = Py_None;
    }
    Py_INCREF(result);
done:
    Py_DECREF(filled);
    Py_DECREF(append);
    return result;
}

/* receive(data, crc, (send_msn, in_message, recv_placed, read_placed), current, receives, regions, reads, memory,
 *         completions, kinds)
 * -> (consumed, fpdus, current, (send_msn, in_message, recv_placed, read_placed), fallback)
 * Places what the FPDUs carry, pops the receives and reads they finished and
 * appends their completions (kinds: the Completion type, RECV, RDMA_READ,
 * SUCCESS) to completions; current is the receive a message is still in. */
static PyObject *py_receive(PyObject *self, PyObject *args)
{
    Py_buffer data;
    int crc;
    unsigned int send_msn;
    int in_message;
    Py_ssize_t recv_placed, read_placed;
    PyObject *completions, *kinds;
    rx_context c = {0};
    if (!PyArg_ParseTuple(args, "y*p(Ipnn)OOO!OOOO", &data, &crc, &send_msn, &in_message, &recv_placed, &read_placed,
                          &c.current, &c.receives, &PyDict_Type, &c.regions, &c.reads, &c.memory, &completions,
                          &kinds))
        return NULL;
    wire_rx_state st = {crc, send_msn, in_message, (size_t)recv_placed, (size_t)read_placed};
    /* Every record needs an FPDU of at least 24 bytes: room for all, so one core call does. */
    size_t max_records = (size_t)data.len / 24 + 1;
    wire_record stack[64];
    wire_record *records = max_records <= 64 ? stack : PyMem_Malloc(max_records * sizeof(wire_record));
    wire_rx_result res;
    PyObject *current = NULL, *result = NULL;
    if (!records) {
        PyErr_NoMemory();
        goto done;
    }
    wire_rx(&st, &rx_ops, &c, data.buf, (size_t)data.len, records, max_records, &res);
    if (c.failed || res.stop == WIRE_STOP_FULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_SystemError, "wire core: records array full");
        goto done;
    }
    if (res.fpdus) {
        current = complete(records, res.records, res.receives_taken, st.in_message, c.current, c.receives, c.reads,
                           completions, kinds);
        if (!current)
            goto done;
    } else {
        current = c.current;
        Py_INCREF(current);
    }
    result = Py_BuildValue("(nnO(Iinn)O)", (Py_ssize_t)res.consumed, (Py_ssize_t)res.fpdus, current, st.send_msn,
                           st.in_message, (Py_ssize_t)st.recv_placed, (Py_ssize_t)st.read_placed,
                           res.stop == WIRE_STOP_FALLBACK ? Py_True : Py_False);
done:
    for (size_t i = 0; i < c.nheld; i++)
        PyBuffer_Release(&c.held[i]);
    PyMem_Free(c.held);
    if (records != stack)
        PyMem_Free(records);
    Py_XDECREF(current);
    PyBuffer_Release(&data);
    return result;
}

/* ---- SMB-Direct batches ------------------------------------------------------- */

/* encode_data_transfers(requested, granted, flags, data, start, count, chunk) -> bytes */
static PyObject *py_smbd_encode(PyObject *self, PyObject *args)
{
    unsigned int requested, granted, flags;
    Py_buffer data;
    Py_ssize_t start, count, chunk;
    if (!PyArg_ParseTuple(args, "IIIy*nnn", &requested, &granted, &flags, &data, &start, &count, &chunk))
        return NULL;
    PyObject *out = NULL;
    if (requested > 0xFFFF || granted > 0xFFFF || flags > 0xFFFF || start < 0 || start > data.len || count < 1 ||
        chunk < 1 || data.len - start > 0xFFFFFFFF || start == data.len) {
        PyErr_SetString(PyExc_ValueError, "data-transfer batch arguments out of range");
        goto done;
    }
    size_t size = wire_smbd_encoded_size((size_t)data.len, (size_t)start, (size_t)count, (size_t)chunk);
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (!out)
        goto done;
    if (wire_smbd_encode((uint8_t *)PyBytes_AS_STRING(out), size, (uint16_t)requested, (uint16_t)granted,
                         (uint16_t)flags, data.buf, (size_t)data.len, (size_t)start, (size_t)count,
                         (size_t)chunk) != size) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_SystemError, "data-transfer encoding overran its buffer");
    }
done:
    PyBuffer_Release(&data);
    return out;
}

/* encode_data_transfer_list(requested, granted, flags, data, start, count, chunk) -> list:
 * the same messages, each in a bytes object of its own (no large buffer to
 * allocate, and nothing to slice out of one). */
static PyObject *py_smbd_encode_list(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "encode_data_transfer_list takes 7 arguments");
        return NULL;
    }
    unsigned long values[3];
    for (int i = 0; i < 3; i++) {
        values[i] = PyLong_AsUnsignedLong(args[i]);
        if (values[i] == (unsigned long)-1 && PyErr_Occurred())
            return NULL;
    }
    Py_ssize_t numbers[3];
    for (int i = 0; i < 3; i++) {
        numbers[i] = PyNumber_AsSsize_t(args[4 + i], PyExc_OverflowError);
        if (numbers[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    unsigned long requested = values[0], granted = values[1], flags = values[2];
    Py_ssize_t start = numbers[0], count = numbers[1], chunk = numbers[2];
    Py_buffer data;
    if (PyObject_GetBuffer(args[3], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *list = NULL;
    if (requested > 0xFFFF || granted > 0xFFFF || flags > 0xFFFF || start < 0 || start >= data.len || count < 1 ||
        chunk < 1 || data.len - start > 0xFFFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "data-transfer batch arguments out of range");
        goto done;
    }
    Py_ssize_t rest = data.len - start, n = (rest + chunk - 1) / chunk;
    if (n > count)
        n = count;
    list = PyList_New(n);
    if (!list)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len = data.len - start < chunk ? data.len - start : chunk;
        Py_ssize_t size = WIRE_DATA_TRANSFER_DATA_OFFSET + len;
        PyObject *out = PyBytes_FromStringAndSize(NULL, size);
        if (!out) {
            Py_CLEAR(list);
            goto done;
        }
        PyList_SET_ITEM(list, i, out);
        if (wire_smbd_encode((uint8_t *)PyBytes_AS_STRING(out), (size_t)size, (uint16_t)requested,
                             (uint16_t)(i ? 0 : granted), (uint16_t)flags, data.buf, (size_t)data.len, (size_t)start,
                             1, (size_t)chunk) != (size_t)size) {
            Py_CLEAR(list);
            PyErr_SetString(PyExc_SystemError, "data-transfer encoding overran its buffer");
            goto done;
        }
        start += len;
    }
done:
    PyBuffer_Release(&data);
    return list;
}

/* A memoryview of bytes [start, start + len) of obj, keeping obj alive. */
static PyObject *byte_view(PyObject *obj, Py_ssize_t start, Py_ssize_t len)
{
    PyObject *view = PyMemoryView_FromObject(obj);
    if (!view)
        return NULL;
    Py_buffer *b = PyMemoryView_GET_BUFFER(view);
    if (b->itemsize != 1 || b->ndim != 1 || (b->format && strcmp(b->format, "B"))) {
        PyObject *cast = PyObject_CallMethod(view, "cast", "s", "B");
        Py_DECREF(view);
        if (!cast)
            return NULL;
        view = cast;
    }
    PyObject *slice = PySequence_GetSlice(view, start, start + len);
    Py_DECREF(view);
    return slice;
}

/* check_data_transfers(pdus, into, (granted, send_credits, message_remaining, receive_target,
 *                      response_requested, fragments, messages, bytes), (max_fragmented, max_receive, credit_max))
 * -> (applied, gathered, ends, totals, payloads, state, fault): fault None or (code, index, a, b, c);
 * ends[i] where piece i ends
 * among the pieces, totals[i] its message's size if it starts one (else 0); into None gathers nothing and
 * payloads are memoryviews of the payloads in place (else None). */
/* The n u64s of a tuple (PyArg_ParseTuple's nested formats cost more than the check). */
static int u64s(PyObject *tuple, uint64_t *out, Py_ssize_t n, const char *what)
{
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != n) {
        PyErr_Format(PyExc_TypeError, "%s must be a tuple of %zd integers", what, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (PyBool_Check(item)) {
            out[i] = item == Py_True;
            continue;
        }
        out[i] = PyLong_AsUnsignedLongLong(item);
        if (out[i] == (uint64_t)-1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

static PyObject *py_smbd_check(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "check_data_transfers takes 4 arguments");
        return NULL;
    }
    PyObject *seq = args[0], *into_obj = args[1];
    Py_buffer into = {0};
    wire_smbd_state st;
    wire_smbd_limits limits;
    uint64_t values[8];
    if (u64s(args[2], values, 8, "state") < 0 || u64s(args[3], &limits.max_fragmented_size, 3, "limits") < 0)
        return NULL;
    st.granted = values[0];
    st.send_credits = values[1];
    st.message_remaining = values[2];
    st.receive_target = values[3];
    st.response_requested = values[4] != 0;
    st.fragments = values[5];
    st.messages = values[6];
    st.bytes = values[7];
    int gather = into_obj != Py_None;
    if (gather && PyObject_GetBuffer(into_obj, &into, PyBUF_WRITABLE) < 0)
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "pdus must be a sequence"), *result = NULL, *ends = NULL, *totals = NULL,
             *payloads = NULL;
    Py_ssize_t count = fast ? PySequence_Fast_GET_SIZE(fast) : 0, held = 0;
    Py_buffer *views = fast ? PyMem_Calloc((size_t)count + 1, sizeof(Py_buffer)) : NULL;
    wire_cspan *spans = fast ? PyMem_Calloc((size_t)count + 1, sizeof(wire_cspan)) : NULL;
    wire_piece *pieces = fast ? PyMem_Calloc((size_t)count + 1, sizeof(wire_piece)) : NULL;
    if (!fast)
        goto done;
    if (!views || !spans || !pieces) {
        PyErr_NoMemory();
        goto done;
    }
    size_t total = 0;
    for (; held < count; held++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, held), &views[held], PyBUF_SIMPLE) < 0)
            goto done;
        spans[held].base = views[held].buf;
        spans[held].len = (size_t)views[held].len;
        total += spans[held].len;
    }
    if (gather && total > (size_t)into.len) {
        PyErr_SetString(PyExc_ValueError, "the gather buffer must hold every message of the batch");
        goto done;
    }
    size_t gathered, npieces;
    wire_smbd_fault fault;
    size_t applied = wire_smbd_check(&st, &limits, spans, (size_t)count, gather ? into.buf : NULL,
                                     gather ? (size_t)into.len : 0, &gathered, pieces, &npieces, &fault);
    ends = PyList_New((Py_ssize_t)npieces);
    totals = PyList_New((Py_ssize_t)npieces);
    if (!ends || !totals)
        goto done;
    unsigned long long end = 0;
    for (size_t i = 0; i < npieces; i++) {
        end += pieces[i].length;
        PyObject *e = PyLong_FromUnsignedLongLong(end), *t = PyLong_FromUnsignedLongLong(pieces[i].total);
        if (e)
            PyList_SET_ITEM(ends, (Py_ssize_t)i, e);
        if (t)
            PyList_SET_ITEM(totals, (Py_ssize_t)i, t);
        if (!e || !t)
            goto done;
    }
    if (gather) {
        payloads = Py_NewRef(Py_None);
    } else {
        payloads = PyList_New((Py_ssize_t)npieces);
        if (!payloads)
            goto done;
        for (size_t i = 0; i < npieces; i++) {
            PyObject *v = byte_view(PySequence_Fast_GET_ITEM(fast, (Py_ssize_t)pieces[i].index),
                                    (Py_ssize_t)pieces[i].offset, (Py_ssize_t)pieces[i].length);
            if (!v)
                goto done;
            PyList_SET_ITEM(payloads, (Py_ssize_t)i, v);
        }
    }
    PyObject *state = PyTuple_New(8), *error = fault.code ? NULL : Py_NewRef(Py_None);
    if (state) {
        uint64_t out[8] = {st.granted, st.send_credits, st.message_remaining, st.receive_target, 0,
                           st.fragments, st.messages, st.bytes};
        for (Py_ssize_t i = 0; i < 8; i++) {
            PyObject *v = i == 4 ? PyBool_FromLong(st.response_requested) : PyLong_FromUnsignedLongLong(out[i]);
            if (!v) {
                Py_CLEAR(state);
                break;
            }
            PyTuple_SET_ITEM(state, i, v);
        }
    }
    if (fault.code)
        error = Py_BuildValue("(inKKK)", fault.code, (Py_ssize_t)fault.index, (unsigned long long)fault.values[0],
                              (unsigned long long)fault.values[1], (unsigned long long)fault.values[2]);
    PyObject *napplied = PyLong_FromSize_t(applied), *ngathered = PyLong_FromSize_t(gathered);
    if (state && error && napplied && ngathered)
        result = PyTuple_Pack(7, napplied, ngathered, ends, totals, payloads, state, error);
    Py_XDECREF(napplied);
    Py_XDECREF(ngathered);
    Py_XDECREF(state);
    Py_XDECREF(error);
done:
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(spans);
    PyMem_Free(pieces);
    Py_XDECREF(ends);
    Py_XDECREF(totals);
    Py_XDECREF(payloads);
    Py_XDECREF(fast);
    if (gather)
        PyBuffer_Release(&into);
    return result;
}

/* ---- module ------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"crc32c", py_crc32c, METH_VARARGS, "crc32c(data, crc=0) -> int: CRC32C, continuing crc."},
    {"crc32c_table", py_crc32c_table, METH_VARARGS, "crc32c_table(data, crc=0) -> int: the same, by table."},
    {"crc32c_hardware", py_crc32c_hardware, METH_NOARGS, "Whether the SSE4.2 instruction computes CRC32C."},
    {"frame", py_frame, METH_VARARGS,
     "frame(requests, untagged_chunk, tagged_chunk, crc) -> (bytes, ends): the FPDUs of each\n"
     "(op, word or stag, msn or offset, data), and where each request's FPDUs end."},
    {"frame_one", (PyCFunction)(void (*)(void))py_frame_one, METH_FASTCALL,
     "frame_one(op, word or stag, msn or offset, data, untagged_chunk, tagged_chunk, crc) -> bytes"},
    {"frame_sends", (PyCFunction)(void (*)(void))py_frame_sends, METH_FASTCALL,
     "frame_sends(msn, datas, untagged_chunk, crc) -> bytes: Sends with consecutive MSNs, in one buffer"},
    {"receive", py_receive, METH_VARARGS, "The FPDU receive fast path (see rdmap.py)."},
    {"encode_data_transfers", py_smbd_encode, METH_VARARGS, "See pdu.encode_data_transfers."},
    {"encode_data_transfer_list", (PyCFunction)(void (*)(void))py_smbd_encode_list, METH_FASTCALL,
     "See pdu.encode_data_transfer_list."},
    {"check_data_transfers", (PyCFunction)(void (*)(void))py_smbd_check, METH_FASTCALL,
     "See pdu.check_data_transfers."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_core", "The compiled wire core.", -1, methods};

PyMODINIT_FUNC PyInit__core(void)
{
#define INTERN(var, text)                                                                                            \
    if (!(var = PyUnicode_InternFromString(text)))                                                                  \
        return NULL;
    INTERN(s_buffer, "buffer");
    INTERN(s_token, "token");
    INTERN(s_access, "access");
    INTERN(s_address, "address");
    INTERN(s_valid, "valid");
    INTERN(s_into, "into");
    INTERN(s_sink_token, "sink_token");
    INTERN(s_invalidate, "invalidate");
    INTERN(s_popleft, "popleft");
    INTERN(s_wr_id, "wr_id");
    INTERN(s_rtr, "rtr");
    INTERN(s_append, "append");
    return PyModule_Create(&module);
}
