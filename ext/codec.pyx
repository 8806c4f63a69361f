# cython: language_level=3
"""Wire codec for the two hot messages of the v2 protocol.

Decodes ``inference.ModelInferRequest`` and encodes ``inference.ModelInferResponse``
(and its streaming wrapper) straight from and to protobuf wire bytes, plus the v2 BYTES
tensor layout. Written by hand because it is the per-request hot path: the protobuf
library builds a Python object per message and copies every tensor payload, while this
module hands raw tensor contents out as zero-copy memoryviews and writes a response with
a single copy of each output tensor. tests/unit/test_codec.py holds it to the protobuf
library as the oracle; bench/codec_micro.py measures the difference.
"""

cimport cython
cimport numpy as cnp
from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer,
)
from cpython.bytes cimport (
    PyBytes_AS_STRING, PyBytes_Check, PyBytes_CheckExact, PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.memoryview cimport PyMemoryView_FromObject
from cpython.number cimport PyNumber_Index
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_Check, PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset, strchr

import numpy as np

include "codec.pxd"

cnp.import_array()


class WireError(ValueError):
    """Malformed protobuf wire data; the message names the field and the byte offset."""


class BytesTensorError(ValueError):
    """A raw BYTES tensor that does not split into the expected elements. ``kind``:
    "fewer" or "more" (``found`` elements), "cut" (element ``found`` runs past the end;
    ``left`` bytes remained for it), "trailing" (``left`` bytes after the last one)."""

    def __init__(self, message, kind, found, left=0):
        super().__init__(message)
        self.kind = kind
        self.found = found
        self.left = left


cdef enum:
    NOGIL_COPY = 1 << 18    # copies this large drop the GIL: model worker threads run on

# ---------------------------------------------------------------------------------------
# Error reporting: readers record a fault, these turn it into a WireError with a path.

cdef enum Where:
    AT_REQUEST
    AT_INPUT
    AT_OUTPUT
    AT_CONTENTS

cdef tuple _REQUEST_FIELDS = (None, "model_name", "model_version", "id", "parameters",
                              "inputs", "outputs", "raw_input_contents")
cdef tuple _INPUT_FIELDS = (None, "name", "datatype", "shape", "parameters", "contents")
cdef tuple _OUTPUT_FIELDS = (None, "name", "parameters")
cdef tuple _CONTENT_FIELDS = (None, "bool_contents", "int_contents", "int64_contents",
                              "uint_contents", "uint64_contents", "fp32_contents",
                              "fp64_contents", "bytes_contents")


cdef str _fault_text(WireReader *r):
    cdef WireFault f = r.fault
    at = r.fault_pos
    if f == WF_TRUNC_VARINT:
        return f"truncated varint at byte {at}"
    if f == WF_LONG_VARINT:
        return f"varint longer than 10 bytes at byte {at}"
    if f == WF_TRUNC_FIXED:
        return f"truncated fixed{r.fault_arg * 8} at byte {at}"
    if f == WF_LENGTH:
        return (f"length {r.fault_arg} exceeds the {r.fault_arg2} bytes left "
                f"at byte {at}")
    if f == WF_BAD_TAG:
        return f"invalid tag at byte {at}"
    if f == WF_FIELD_ZERO:
        return f"field number 0 at byte {at}"
    if f == WF_WIRE_TYPE:
        return (f"unsupported wire type {r.fault_arg} (field {r.fault_arg2}) "
                f"at byte {at}")
    if f == WF_PACKED_SIZE:
        return (f"packed length {r.fault_arg} is not a multiple of {r.fault_arg2} "
                f"at byte {at}")
    if f == WF_UTF8:
        return f"invalid UTF-8 at byte {at}"
    return f"malformed data at byte {at}"


cdef int _raise(WireReader *r, int where, Py_ssize_t index, uint32_t field) except -1:
    """Raise the WireError for r's fault, read while in `field` (0: between fields)."""
    cdef tuple names
    if where == AT_REQUEST:
        path = "ModelInferRequest"
        names = _REQUEST_FIELDS
    elif where == AT_INPUT:
        path = f"ModelInferRequest.inputs[{index}]"
        names = _INPUT_FIELDS
    elif where == AT_OUTPUT:
        path = f"ModelInferRequest.outputs[{index}]"
        names = _OUTPUT_FIELDS
    else:
        path = f"ModelInferRequest.inputs[{index}].contents"
        names = _CONTENT_FIELDS
    if 0 < field < len(names):
        path = f"{path}.{names[field]}"
    elif field != 0:
        path = f"{path} (unknown field {field})"
    raise WireError(f"{path}: {_fault_text(r)}")


cdef str _read_str(WireReader *r, Py_ssize_t start, Py_ssize_t size, int where,
                   Py_ssize_t index, uint32_t field):
    cdef Py_ssize_t bad
    if size == 0:
        return ""
    try:
        return PyUnicode_DecodeUTF8(<char *>r.base + start, size, NULL)
    except UnicodeDecodeError as exc:
        bad = start + exc.start
    wr_fail(r, WF_UTF8, bad, 0, 0)
    _raise(r, where, index, field)


# The v2 datatypes come back as the same interned str objects, without decoding.
cdef tuple _DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                         "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16")
cdef tuple _DATATYPES_UTF8 = tuple(s.encode() for s in _DATATYPES)


cdef inline str _read_datatype(WireReader *r, Py_ssize_t start, Py_ssize_t size,
                               Py_ssize_t index):
    cdef bytes known
    cdef Py_ssize_t i
    for i in range(len(_DATATYPES_UTF8)):
        known = <bytes>_DATATYPES_UTF8[i]
        if (PyBytes_GET_SIZE(known) == size
                and memcmp(PyBytes_AS_STRING(known), r.base + start, <size_t>size) == 0):
            return <str>_DATATYPES[i]
    return _read_str(r, start, size, AT_INPUT, index, 2)

# ---------------------------------------------------------------------------------------
# Decoding ModelInferRequest


@cython.final
@cython.auto_pickle(False)
@cython.freelist(16)
cdef class InferRequest:
    """A decoded ModelInferRequest; raw_input_contents are views into the request bytes."""
    cdef readonly str model_name
    cdef readonly str model_version
    cdef readonly str id
    cdef readonly dict parameters
    cdef readonly list inputs
    cdef readonly list outputs
    cdef readonly list raw_input_contents

    def __repr__(self):
        return (f"InferRequest(model_name={self.model_name!r}, "
                f"model_version={self.model_version!r}, id={self.id!r}, "
                f"inputs={self.inputs!r}, outputs={self.outputs!r}, "
                f"raw_input_contents=[{len(self.raw_input_contents)} buffers])")


@cython.final
@cython.auto_pickle(False)
@cython.freelist(32)
cdef class InputTensor:
    """One InferInputTensor; typed contents decoded to numpy arrays (bytes: lists)."""
    cdef readonly str name
    cdef readonly str datatype
    cdef readonly tuple shape
    cdef readonly dict parameters
    cdef readonly dict contents

    def __repr__(self):
        return (f"InputTensor(name={self.name!r}, datatype={self.datatype!r}, "
                f"shape={self.shape!r}, contents={sorted(self.contents)!r})")


@cython.final
@cython.auto_pickle(False)
@cython.freelist(32)
cdef class RequestedOutput:
    """One InferRequestedOutputTensor."""
    cdef readonly str name
    cdef readonly dict parameters

    def __repr__(self):
        return f"RequestedOutput(name={self.name!r}, parameters={self.parameters!r})"


cdef object _param_value(const uint8_t *base, Py_ssize_t start, Py_ssize_t end,
                         object current, int where, Py_ssize_t index, uint32_t pfield):
    """Decode one InferParameter into current (a repeated value field merges, as
    protobuf does: the oneof member seen last wins)."""
    cdef WireReader r
    cdef uint32_t field = 0, wt = 0
    cdef uint64_t v = 0
    cdef double d
    cdef Py_ssize_t s = 0, n = 0
    wr_init(&r, base, start, end)
    while r.pos < r.end:
        if wr_tag(&r, &field, &wt) < 0:
            _raise(&r, where, index, pfield)
        if wt == WT_VARINT and (field == 1 or field == 2 or field == 5):
            if wr_varint(&r, &v) < 0:
                _raise(&r, where, index, pfield)
            if field == 1:
                current = v != 0
            elif field == 2:
                current = PyLong_FromLongLong(<int64_t>v)
            else:
                current = PyLong_FromUnsignedLongLong(v)
        elif field == 3 and wt == WT_LEN:
            if wr_len(&r, &s, &n) < 0:
                _raise(&r, where, index, pfield)
            current = _read_str(&r, s, n, where, index, pfield)
        elif field == 4 and wt == WT_I64:
            if wr_fixed(&r, 8, &d) < 0:
                _raise(&r, where, index, pfield)
            current = d
        elif wr_skip(&r, wt) < 0:
            _raise(&r, where, index, pfield)
    return current


cdef int _param_entry(const uint8_t *base, Py_ssize_t start, Py_ssize_t end, dict out,
                      int where, Py_ssize_t index, uint32_t pfield) except -1:
    """Decode one map<string, InferParameter> entry into out (a later key wins).

    Unknown fields inside the entry are skipped and the entry kept (upb instead moves
    such an entry to the parent's unknown fields, so it vanishes from the map there)."""
    cdef WireReader r
    cdef uint32_t field = 0, wt = 0
    cdef Py_ssize_t s = 0, n = 0
    key = ""
    value = None
    wr_init(&r, base, start, end)
    while r.pos < r.end:
        if wr_tag(&r, &field, &wt) < 0:
            _raise(&r, where, index, pfield)
        if wt == WT_LEN and (field == 1 or field == 2):
            if wr_len(&r, &s, &n) < 0:
                _raise(&r, where, index, pfield)
            if field == 1:
                key = _read_str(&r, s, n, where, index, pfield)
            else:
                value = _param_value(base, s, s + n, value, where, index, pfield)
        elif wr_skip(&r, wt) < 0:
            _raise(&r, where, index, pfield)
    out[key] = value
    return 0


cdef inline void _store_varint(char *dst, uint32_t field, Py_ssize_t i,
                               uint64_t v) noexcept nogil:
    if field == 1:
        (<uint8_t *>dst)[i] = v != 0
    elif field == 2 or field == 4:              # int32 / uint32 keep the low 32 bits
        (<uint32_t *>dst)[i] = <uint32_t>v
    else:
        (<uint64_t *>dst)[i] = v


cdef int _contents_pass(const uint8_t *base, I64Vec *spans, Py_ssize_t index,
                        Py_ssize_t *counts, char **fill, list byte_items) except -1:
    """One pass over an input's InferTensorContents occurrences (repeats concatenate).

    With fill NULL, validate and count the elements of fields 1..8 into counts; else
    write them to fill[field] (sized by the counting pass) and byte_items."""
    cdef WireReader r, packed
    cdef uint32_t field = 0, wt = 0
    cdef uint64_t v = 0
    cdef Py_ssize_t k, s = 0, n = 0, width
    cdef Py_ssize_t at[9]
    cdef char *dst
    memset(at, 0, sizeof(at))
    for k in range(0, spans.n, 2):
        wr_init(&r, base, spans.data[k], spans.data[k + 1])
        while r.pos < r.end:
            if wr_tag(&r, &field, &wt) < 0:
                _raise(&r, AT_CONTENTS, index, 0)
            if 1 <= field <= 5 and wt == WT_VARINT:
                if wr_varint(&r, &v) < 0:
                    _raise(&r, AT_CONTENTS, index, field)
                if fill != NULL:
                    _store_varint(fill[field], field, at[field], v)
                at[field] += 1
            elif 1 <= field <= 5 and wt == WT_LEN:     # packed: a run of varints
                if wr_len(&r, &s, &n) < 0:
                    _raise(&r, AT_CONTENTS, index, field)
                wr_init(&packed, base, s, s + n)
                while packed.pos < packed.end:
                    if wr_varint(&packed, &v) < 0:
                        _raise(&packed, AT_CONTENTS, index, field)
                    if fill != NULL:
                        _store_varint(fill[field], field, at[field], v)
                    at[field] += 1
            elif (field == 6 or field == 7) and (
                    wt == WT_LEN or wt == <uint32_t>(WT_I32 if field == 6 else WT_I64)):
                width = 4 if field == 6 else 8
                if wt == WT_LEN:
                    if wr_len(&r, &s, &n) < 0:
                        _raise(&r, AT_CONTENTS, index, field)
                    if n % width:
                        wr_fail(&r, WF_PACKED_SIZE, s, <uint64_t>n, <uint64_t>width)
                        _raise(&r, AT_CONTENTS, index, field)
                else:
                    s = r.pos
                    n = width
                    if wr_skip(&r, wt) < 0:
                        _raise(&r, AT_CONTENTS, index, field)
                if fill != NULL and n:          # an empty run has no array to go to
                    dst = fill[field] + at[field] * width
                    if n >= NOGIL_COPY:
                        with nogil:
                            memcpy(dst, base + s, <size_t>n)
                    else:
                        memcpy(dst, base + s, <size_t>n)
                at[field] += n // width
            elif field == 8 and wt == WT_LEN:
                if wr_len(&r, &s, &n) < 0:
                    _raise(&r, AT_CONTENTS, index, field)
                if fill != NULL:
                    item = PyBytes_FromStringAndSize(<char *>base + s, n)
                    Py_INCREF(item)
                    PyList_SET_ITEM(byte_items, at[8], item)
                at[8] += 1
            elif wr_skip(&r, wt) < 0:
                _raise(&r, AT_CONTENTS, index, field)
    if fill == NULL:
        memcpy(counts, at, sizeof(at))
    return 0


cdef inline int _content_type(int field) noexcept nogil:
    if field == 1:
        return cnp.NPY_BOOL
    if field == 2:
        return cnp.NPY_INT32
    if field == 3:
        return cnp.NPY_INT64
    if field == 4:
        return cnp.NPY_UINT32
    if field == 5:
        return cnp.NPY_UINT64
    return cnp.NPY_FLOAT32 if field == 6 else cnp.NPY_FLOAT64


cdef dict _decode_contents(const uint8_t *base, I64Vec *spans, Py_ssize_t index):
    cdef Py_ssize_t counts[9]
    cdef char *fill[9]
    cdef cnp.npy_intp dim
    cdef int field
    cdef list byte_items = None
    cdef dict contents = {}
    _contents_pass(base, spans, index, counts, NULL, None)
    memset(fill, 0, sizeof(fill))
    for field in range(1, 8):
        if counts[field]:
            dim = counts[field]
            arr = cnp.PyArray_SimpleNew(1, &dim, _content_type(field))
            fill[field] = <char *>cnp.PyArray_DATA(arr)
            contents[_CONTENT_FIELDS[field]] = arr
    if counts[8]:
        byte_items = PyList_New(counts[8])
        contents["bytes_contents"] = byte_items
    if contents:
        _contents_pass(base, spans, index, counts, fill, byte_items)
    return contents


cdef InputTensor _decode_input(const uint8_t *base, Py_ssize_t start, Py_ssize_t end,
                               Py_ssize_t index):
    cdef WireReader r, packed
    cdef uint32_t field = 0, wt = 0
    cdef uint64_t v = 0
    cdef Py_ssize_t s = 0, n = 0, i
    cdef I64Vec dims, spans
    cdef InputTensor t = InputTensor.__new__(InputTensor)
    t.name = ""
    t.datatype = ""
    t.parameters = {}
    wr_init(&r, base, start, end)
    i64vec_init(&dims)
    i64vec_init(&spans)
    try:
        while r.pos < r.end:
            if wr_tag(&r, &field, &wt) < 0:
                _raise(&r, AT_INPUT, index, 0)
            if field == 3 and wt == WT_VARINT:
                if wr_varint(&r, &v) < 0:
                    _raise(&r, AT_INPUT, index, 3)
                i64vec_push(&dims, <int64_t>v)
            elif wt == WT_LEN and 1 <= field <= 5:
                if wr_len(&r, &s, &n) < 0:
                    _raise(&r, AT_INPUT, index, field)
                if field == 1:
                    t.name = _read_str(&r, s, n, AT_INPUT, index, 1)
                elif field == 2:
                    t.datatype = _read_datatype(&r, s, n, index)
                elif field == 3:
                    wr_init(&packed, base, s, s + n)
                    while packed.pos < packed.end:
                        if wr_varint(&packed, &v) < 0:
                            _raise(&packed, AT_INPUT, index, 3)
                        i64vec_push(&dims, <int64_t>v)
                elif field == 4:
                    _param_entry(base, s, s + n, t.parameters, AT_INPUT, index, 4)
                else:
                    i64vec_push(&spans, s)
                    i64vec_push(&spans, s + n)
            elif wr_skip(&r, wt) < 0:
                _raise(&r, AT_INPUT, index, field)
        shape = PyTuple_New(dims.n)
        for i in range(dims.n):
            item = PyLong_FromLongLong(dims.data[i])
            Py_INCREF(item)
            PyTuple_SET_ITEM(shape, i, item)
        t.shape = shape
        t.contents = _decode_contents(base, &spans, index) if spans.n else {}
    finally:
        i64vec_free(&dims)
        i64vec_free(&spans)
    return t


cdef RequestedOutput _decode_output(const uint8_t *base, Py_ssize_t start, Py_ssize_t end,
                                    Py_ssize_t index):
    cdef WireReader r
    cdef uint32_t field = 0, wt = 0
    cdef Py_ssize_t s = 0, n = 0
    cdef RequestedOutput o = RequestedOutput.__new__(RequestedOutput)
    o.name = ""
    o.parameters = {}
    wr_init(&r, base, start, end)
    while r.pos < r.end:
        if wr_tag(&r, &field, &wt) < 0:
            _raise(&r, AT_OUTPUT, index, 0)
        if wt == WT_LEN and (field == 1 or field == 2):
            if wr_len(&r, &s, &n) < 0:
                _raise(&r, AT_OUTPUT, index, field)
            if field == 1:
                o.name = _read_str(&r, s, n, AT_OUTPUT, index, 1)
            else:
                _param_entry(base, s, s + n, o.parameters, AT_OUTPUT, index, 2)
        elif wr_skip(&r, wt) < 0:
            _raise(&r, AT_OUTPUT, index, field)
    return o


cdef object _byte_view(object data):
    """A read-only, flat, byte-formatted memoryview of data, to slice raw contents from."""
    view = PyMemoryView_FromObject(data)
    if PyBytes_CheckExact(data):
        return view
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    if not view.readonly:
        view = view.toreadonly()
    return view


cdef InferRequest _decode_request(object data, const uint8_t *base, Py_ssize_t size):
    cdef WireReader r
    cdef uint32_t field = 0, wt = 0
    cdef Py_ssize_t s = 0, n = 0
    cdef InferRequest req = InferRequest.__new__(InferRequest)
    cdef list inputs = [], outputs = [], raw = []
    cdef object flat = None
    req.model_name = req.model_version = req.id = ""
    req.parameters = {}
    req.inputs = inputs
    req.outputs = outputs
    req.raw_input_contents = raw
    wr_init(&r, base, 0, size)
    while r.pos < r.end:
        if wr_tag(&r, &field, &wt) < 0:
            _raise(&r, AT_REQUEST, 0, 0)
        if wt == WT_LEN and 1 <= field <= 7:
            if wr_len(&r, &s, &n) < 0:
                _raise(&r, AT_REQUEST, 0, field)
            if field == 5:
                inputs.append(_decode_input(base, s, s + n, len(inputs)))
            elif field == 7:
                if flat is None:
                    flat = _byte_view(data)
                raw.append(flat[s:s + n])
            elif field == 6:
                outputs.append(_decode_output(base, s, s + n, len(outputs)))
            elif field == 4:
                _param_entry(base, s, s + n, req.parameters, AT_REQUEST, 0, 4)
            elif field == 1:
                req.model_name = _read_str(&r, s, n, AT_REQUEST, 0, 1)
            elif field == 2:
                req.model_version = _read_str(&r, s, n, AT_REQUEST, 0, 2)
            else:
                req.id = _read_str(&r, s, n, AT_REQUEST, 0, 3)
        elif wr_skip(&r, wt) < 0:
            _raise(&r, AT_REQUEST, 0, field)
    return req


def decode_infer_request(data):
    """Decode a serialized ModelInferRequest (bytes or any contiguous buffer).

    Raises WireError on malformed data. raw_input_contents are read-only memoryviews
    into data: no tensor bytes are copied."""
    cdef Py_buffer view
    if PyBytes_CheckExact(data):
        return _decode_request(data, <const uint8_t *>PyBytes_AS_STRING(data),
                               PyBytes_GET_SIZE(data))
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return _decode_request(data, <const uint8_t *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)

# ---------------------------------------------------------------------------------------
# Encoding ModelInferResponse / ModelStreamInferResponse

cdef enum ParamKind:        # values are the InferParameter field numbers
    PK_NONE = 0
    PK_BOOL = 1
    PK_INT64 = 2
    PK_STRING = 3
    PK_DOUBLE = 4
    PK_UINT64 = 5

ctypedef struct ParamVal:
    ParamKind kind
    uint64_t u
    double d
    const char *s
    Py_ssize_t slen

cdef object _TWO_63 = 2 ** 63


cdef Py_ssize_t _param_val(object key, object value, ParamVal *pv) except -1:
    """Classify value into pv; return the length of its InferParameter message."""
    if value is None:
        pv.kind = PK_NONE
        return 0
    if value is True or value is False:
        pv.kind = PK_BOOL
        pv.u = value is True
        return 2
    if isinstance(value, int):
        try:
            if value >= _TWO_63:
                pv.kind = PK_UINT64
                pv.u = <uint64_t>value
            else:
                pv.kind = PK_INT64
                pv.u = <uint64_t><int64_t>value
        except OverflowError:
            raise OverflowError(
                f"parameter {key!r}: {value} is outside the int64/uint64 range") from None
        return 1 + varint_size(pv.u)
    if isinstance(value, float):
        pv.kind = PK_DOUBLE
        pv.d = value
        return 9
    if isinstance(value, str):
        pv.kind = PK_STRING
        pv.s = PyUnicode_AsUTF8AndSize(value, &pv.slen)
        return 1 + varint_size(<uint64_t>pv.slen) + pv.slen
    raise TypeError(f"parameter {key!r}: expected bool, int, float, str or None, "
                    f"got {type(value).__name__}")


cdef char *_put_param_entry(char *p, uint8_t tag, const char *key, Py_ssize_t klen,
                            ParamVal *pv, Py_ssize_t vlen) noexcept:
    cdef Py_ssize_t entry = (1 + varint_size(<uint64_t>klen) + klen
                             + 1 + varint_size(<uint64_t>vlen) + vlen)
    p[0] = <char>tag
    p = put_varint(p + 1, <uint64_t>entry)
    p = put_bytes_field(p, 0x0A, key, klen)
    p[0] = 0x12
    p = put_varint(p + 1, <uint64_t>vlen)
    if pv.kind == PK_NONE:
        return p
    p[0] = <char>((<int>pv.kind << 3) | (WT_I64 if pv.kind == PK_DOUBLE else
                                         WT_LEN if pv.kind == PK_STRING else WT_VARINT))
    p += 1
    if pv.kind == PK_DOUBLE:
        memcpy(p, &pv.d, 8)
        return p + 8
    if pv.kind == PK_STRING:
        p = put_varint(p, <uint64_t>pv.slen)
        memcpy(p, pv.s, <size_t>pv.slen)
        return p + pv.slen
    return put_varint(p, pv.u)


cdef Py_ssize_t _params_size(dict params) except -1:
    cdef ParamVal pv
    cdef Py_ssize_t klen, vlen, entry, total = 0
    for key, value in params.items():
        if not isinstance(key, str):
            raise TypeError(f"parameter names must be str, got {type(key).__name__}")
        PyUnicode_AsUTF8AndSize(key, &klen)
        vlen = _param_val(key, value, &pv)
        entry = 1 + varint_size(<uint64_t>klen) + klen + 1 + varint_size(<uint64_t>vlen) + vlen
        total += 1 + varint_size(<uint64_t>entry) + entry
    return total


cdef char *_put_params(char *p, uint8_t tag, dict params) except NULL:
    cdef ParamVal pv
    cdef Py_ssize_t klen, vlen
    cdef const char *k
    for key, value in params.items():
        k = PyUnicode_AsUTF8AndSize(key, &klen)
        vlen = _param_val(key, value, &pv)
        p = _put_param_entry(p, tag, k, klen, &pv, vlen)
    return p


ctypedef struct OutSpec:
    const char *name
    Py_ssize_t name_len
    const char *dtype
    Py_ssize_t dtype_len
    Py_ssize_t dims_at
    Py_ssize_t ndims
    Py_ssize_t shape_len        # packed payload of shape
    Py_ssize_t msg_len          # InferOutputTensor
    const char *data
    Py_ssize_t data_len
    bint has_view
    Py_buffer view


cdef inline Py_ssize_t _field_len(Py_ssize_t n) noexcept nogil:
    """Bytes taken by a length-delimited field with an n-byte payload (one-byte tag)."""
    return 1 + varint_size(<uint64_t>n) + n


cdef int _out_spec(object item, Py_ssize_t i, OutSpec *spec, I64Vec *dims,
                   list held) except -1:
    cdef int64_t d
    cdef const char *fmt
    name, datatype, shape, data = item
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise TypeError(f"output {i}: name and datatype must be str")
    held.append(item if type(item) is tuple else (name, datatype, data))
    spec.name = PyUnicode_AsUTF8AndSize(name, &spec.name_len)
    spec.dtype = PyUnicode_AsUTF8AndSize(datatype, &spec.dtype_len)
    spec.dims_at = dims.n
    for dim in shape:
        d = PyNumber_Index(dim)
        i64vec_push(dims, d)
        spec.shape_len += varint_size(<uint64_t>d)
    spec.ndims = dims.n - spec.dims_at
    spec.msg_len = ((_field_len(spec.name_len) if spec.name_len else 0)
                    + (_field_len(spec.dtype_len) if spec.dtype_len else 0)
                    + (_field_len(spec.shape_len) if spec.ndims else 0))
    if PyBytes_CheckExact(data):
        spec.data = PyBytes_AS_STRING(data)
        spec.data_len = PyBytes_GET_SIZE(data)
        return 0
    try:
        PyObject_GetBuffer(data, &spec.view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except TypeError as exc:
        raise TypeError(f"output {name!r}: data must be bytes or a numeric numpy array "
                        f"({exc})") from None
    except (BufferError, ValueError) as exc:
        raise ValueError(f"output {name!r}: data must be C-contiguous ({exc})") from None
    spec.has_view = True
    fmt = spec.view.format
    if fmt != NULL and strchr(fmt, c'O') != NULL:     # object arrays export pointers
        raise TypeError(f"output {name!r}: data must be bytes or a numeric numpy array "
                        f"(got Python objects)")
    if fmt != NULL and (fmt[0] == c'>' or fmt[0] == c'!'):
        raise ValueError(f"output {name!r}: data must be little-endian")
    spec.data = <const char *>spec.view.buf
    spec.data_len = spec.view.len
    return 0


cdef inline char *_put_copy(char *p, const char *src, Py_ssize_t n) noexcept:
    if n >= NOGIL_COPY:
        with nogil:
            memcpy(p, src, <size_t>n)
    else:
        memcpy(p, src, <size_t>n)
    return p + n


def encode_infer_response(str model_name not None, str model_version not None,
                          str id not None, outputs, dict parameters=None):
    """Serialize a ModelInferResponse whose outputs carry raw_output_contents.

    outputs: (name, datatype, shape, data) tuples; data is bytes or a C-contiguous,
    little-endian numpy array, copied once, straight into the returned bytes."""
    cdef Py_ssize_t i, k, n_out = len(outputs)
    cdef Py_ssize_t name_len, version_len, id_len, total = 0
    cdef const char *name_p = PyUnicode_AsUTF8AndSize(model_name, &name_len)
    cdef const char *version_p = PyUnicode_AsUTF8AndSize(model_version, &version_len)
    cdef const char *id_p = PyUnicode_AsUTF8AndSize(id, &id_len)
    cdef OutSpec *spec
    cdef OutSpec *specs = <OutSpec *>calloc(n_out + 1, sizeof(OutSpec))
    cdef I64Vec dims
    cdef list held = []
    cdef char *start
    cdef char *p
    if specs == NULL:
        raise MemoryError()
    i64vec_init(&dims)
    try:
        for i in range(n_out):
            spec = &specs[i]
            _out_spec(outputs[i], i, spec, &dims, held)
            total += _field_len(spec.msg_len) + _field_len(spec.data_len)
        total += ((_field_len(name_len) if name_len else 0)
                  + (_field_len(version_len) if version_len else 0)
                  + (_field_len(id_len) if id_len else 0))
        if parameters:
            total += _params_size(parameters)
        result = PyBytes_FromStringAndSize(NULL, total)
        p = start = PyBytes_AS_STRING(result)
        if name_len:
            p = put_bytes_field(p, 0x0A, name_p, name_len)
        if version_len:
            p = put_bytes_field(p, 0x12, version_p, version_len)
        if id_len:
            p = put_bytes_field(p, 0x1A, id_p, id_len)
        if parameters:
            p = _put_params(p, 0x22, parameters)
        for i in range(n_out):
            spec = &specs[i]
            p[0] = 0x2A
            p = put_varint(p + 1, <uint64_t>spec.msg_len)
            if spec.name_len:
                p = put_bytes_field(p, 0x0A, spec.name, spec.name_len)
            if spec.dtype_len:
                p = put_bytes_field(p, 0x12, spec.dtype, spec.dtype_len)
            if spec.ndims:
                p[0] = 0x1A
                p = put_varint(p + 1, <uint64_t>spec.shape_len)
                for k in range(spec.dims_at, spec.dims_at + spec.ndims):
                    p = put_varint(p, <uint64_t>dims.data[k])
        for i in range(n_out):
            spec = &specs[i]
            p[0] = 0x32
            p = put_varint(p + 1, <uint64_t>spec.data_len)
            p = _put_copy(p, spec.data, spec.data_len)
        if p != start + total:
            raise SystemError("encode_infer_response: size accounting is off")
        return result
    finally:
        for i in range(n_out):
            if specs[i].has_view:
                PyBuffer_Release(&specs[i].view)
        free(specs)
        i64vec_free(&dims)


def encode_stream_response(infer_response=None, str error_message not None=""):
    """Serialize a ModelStreamInferResponse around already-encoded response bytes."""
    cdef Py_buffer view
    cdef Py_ssize_t err_len, total = 0
    cdef const char *err_p = PyUnicode_AsUTF8AndSize(error_message, &err_len)
    cdef char *p
    if err_len:
        total += _field_len(err_len)
    if infer_response is None:
        result = PyBytes_FromStringAndSize(NULL, total)
        if err_len:
            put_bytes_field(PyBytes_AS_STRING(result), 0x0A, err_p, err_len)
        return result
    PyObject_GetBuffer(infer_response, &view, PyBUF_SIMPLE)
    try:
        total += _field_len(view.len)
        result = PyBytes_FromStringAndSize(NULL, total)
        p = PyBytes_AS_STRING(result)
        if err_len:
            p = put_bytes_field(p, 0x0A, err_p, err_len)
        p[0] = 0x12
        p = put_varint(p + 1, <uint64_t>view.len)
        _put_copy(p, <const char *>view.buf, view.len)
        return result
    finally:
        PyBuffer_Release(&view)

# ---------------------------------------------------------------------------------------
# v2 BYTES tensors: each element is a 4-byte little-endian length, then that many bytes.


cdef inline uint32_t _load_u32(const uint8_t *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef Py_ssize_t _scan_bytes(const uint8_t *buf, Py_ssize_t size, Py_ssize_t limit,
                            Py_ssize_t *pos, Py_ssize_t *bad) noexcept nogil:
    """Step over up to `limit` elements from pos; return how many were whole. On a cut
    element set bad to its index, else to -1."""
    cdef Py_ssize_t i = 0
    cdef uint32_t n
    bad[0] = -1
    while i < limit and pos[0] < size:
        if size - pos[0] < 4:
            bad[0] = i
            return i
        n = _load_u32(buf + pos[0])
        if <uint64_t>n > <uint64_t>(size - pos[0] - 4):
            bad[0] = i
            return i
        pos[0] += 4 + <Py_ssize_t>n
        i += 1
    return i


cdef str _cut_element(const uint8_t *buf, Py_ssize_t size, Py_ssize_t pos, Py_ssize_t i):
    cdef Py_ssize_t left = size - pos
    if left < 4:
        return f"BYTES tensor: element {i} length prefix is cut short ({left} of 4 bytes)"
    return (f"BYTES tensor: element {i} declares {_load_u32(buf + pos)} bytes "
            f"but only {left - 4} remain")


def decode_bytes_tensor(data, Py_ssize_t count):
    """Split a raw v2 BYTES tensor into a 1-D object array of `count` bytes objects."""
    cdef Py_buffer view
    cdef const uint8_t *buf
    cdef Py_ssize_t i, n, pos = 0, extra_pos, bad, whole, extra
    cdef cnp.npy_intp dim = count
    cdef PyObject **slots
    if count < 0:
        raise ValueError(f"BYTES tensor: count must be >= 0, got {count}")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        buf = <const uint8_t *>view.buf
        whole = _scan_bytes(buf, view.len, count, &pos, &bad)
        if bad >= 0:
            raise BytesTensorError(
                _cut_element(buf, view.len, pos, bad), "cut", bad, view.len - pos)
        if whole < count:
            raise BytesTensorError(
                f"BYTES tensor holds {whole} elements, expected {count}", "fewer", whole)
        if pos < view.len:
            extra_pos = pos
            extra = _scan_bytes(buf, view.len, view.len, &extra_pos, &bad)
            if bad < 0:
                raise BytesTensorError(
                    f"BYTES tensor holds {count + extra} elements, expected {count}",
                    "more", count + extra)
            raise BytesTensorError(
                f"BYTES tensor: {view.len - pos} trailing bytes after {count} elements",
                "trailing", count, view.len - pos)
        arr = cnp.PyArray_SimpleNew(1, &dim, cnp.NPY_OBJECT)
        slots = <PyObject **>cnp.PyArray_DATA(arr)
        pos = 0
        for i in range(count):
            n = <Py_ssize_t>_load_u32(buf + pos)
            item = PyBytes_FromStringAndSize(<char *>buf + pos + 4, n)
            Py_INCREF(item)
            Py_XDECREF(slots[i])
            slots[i] = <PyObject *>item
            pos += 4 + n
        return arr
    finally:
        PyBuffer_Release(&view)


cdef inline char *_put_element(char *p, const char *src, Py_ssize_t n) noexcept:
    cdef uint32_t n32 = <uint32_t>n
    memcpy(p, &n32, 4)
    memcpy(p + 4, src, <size_t>n)
    return p + 4 + n


cdef bytes _encode_fixed_bytes(cnp.ndarray arr):
    """numpy 'S' arrays: each element loses its trailing NULs, as numpy's item() does."""
    cdef Py_ssize_t i, n, total = 0, width = arr.dtype.itemsize
    cdef Py_ssize_t count = arr.size
    cdef const char *src
    cdef char *p
    arr = np.ascontiguousarray(arr)
    src = <const char *>cnp.PyArray_DATA(arr)
    for i in range(count):
        n = width
        while n and src[i * width + n - 1] == 0:
            n -= 1
        total += 4 + n
    result = PyBytes_FromStringAndSize(NULL, total)
    p = PyBytes_AS_STRING(result)
    for i in range(count):
        n = width
        while n and src[i * width + n - 1] == 0:
            n -= 1
        p = _put_element(p, src + i * width, n)
    return result


cdef inline const char *_element_bytes(PyObject *obj, Py_ssize_t i,
                                       Py_ssize_t *n) except? NULL:
    if obj != NULL and PyBytes_Check(<object>obj):
        n[0] = PyBytes_GET_SIZE(<object>obj)
        return PyBytes_AS_STRING(<object>obj)
    if obj != NULL and PyUnicode_Check(<object>obj):
        return PyUnicode_AsUTF8AndSize(<object>obj, n)
    kind = "None" if obj == NULL else type(<object>obj).__name__
    raise TypeError(f"BYTES tensor: element {i} is {kind}, expected bytes or str")


def encode_bytes_tensor(arr):
    """Serialize an array of bytes/str objects (or numpy 'S'/'U') in v2 BYTES layout."""
    cdef cnp.ndarray flat
    cdef PyObject **objs
    cdef Py_ssize_t i, n, count, total = 0
    cdef const char *src
    cdef char *p
    if not isinstance(arr, np.ndarray):
        arr = np.asarray(arr, dtype=object)
    kind = arr.dtype.kind
    if kind == "S":
        return _encode_fixed_bytes(arr)
    if kind == "U":
        arr = arr.astype(object)
    elif kind != "O":
        raise TypeError(f"BYTES tensor: expected an object, 'S' or 'U' array, "
                        f"got dtype {arr.dtype}")
    flat = np.ascontiguousarray(arr).reshape(-1)
    count = flat.shape[0]
    objs = <PyObject **>cnp.PyArray_DATA(flat)
    for i in range(count):
        _element_bytes(objs[i], i, &n)
        if <uint64_t>n > 0xFFFFFFFFu:
            raise ValueError(f"BYTES tensor: element {i} is {n} bytes, over the 4 GiB "
                             f"a length prefix can hold")
        total += 4 + n
    result = PyBytes_FromStringAndSize(NULL, total)
    p = PyBytes_AS_STRING(result)
    for i in range(count):
        src = _element_bytes(objs[i], i, &n)
        p = _put_element(p, src, n)
    return result
