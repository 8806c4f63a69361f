# cython: language_level=3
"""The numeric ``data`` arrays of a v2 REST inference request, decoded without Python lists.

orjson turns a JSON ``data`` array into one Python float or int per element, which
numpy then converts a second time. Here ``split_input_data`` walks the request header
once and cuts out the ``data`` value of each element of ``inputs``, so that orjson
parses only the small rest; ``parse_data`` parses one such span straight into the bytes
of its datatype (the GIL released for large ones), one pass, no per-element object.

The contract: ``parse_data`` gives exactly ``np.asarray(orjson.loads(span),
dtype).tobytes()``, bit for bit, or None. Anything the reference rejects or decides by
its own rules (ints out of range, fractions into ints, numbers into BOOL, ints past
uint64, ragged nesting, anything not a number) is None, and the caller takes that
reference path, which also words the error. tests/unit/test_jsondata.py holds the module
to the reference; bench/json_decode_micro.py measures both.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy

import numpy as np

include "jsondata.pxd"


cdef enum:
    NOGIL_PARSE = 1 << 16    # spans this long drop the GIL: model worker threads run on
    SCAN_MAX_DEPTH = 256     # deeper headers take orjson's path (its own limit is 1024)
    MAX_RANK = 32            # deeper data arrays too (numpy's limit is 64 dimensions)


# ---------------------------------------------------------------------------------------
# The header scan.

cdef enum Role:
    R_OTHER
    R_TOP       # the request object
    R_INPUTS    # its "inputs" array
    R_INPUT     # an object element of "inputs"
    R_DATA      # the value of an input's "data" key (never a container's role)

cdef enum State:
    S_OBJ_OPEN  # just after '{': a key or '}'
    S_ARR_OPEN  # just after '[': a value or ']'
    S_KEY       # after ',' in an object
    S_VALUE     # after ',' in an array
    S_AFTER     # after a value: ',' or the closer


cdef int _scan(const unsigned char *s, Py_ssize_t n, list spans) except -2:
    """Append (input index, start, end) to ``spans`` for the value of "data" in each
    object element of the top-level "inputs" array. -1 for a header this scan does not
    vouch for: malformed structure, a key with escapes where "inputs" or "data" could
    hide, a duplicate "inputs" or "data" key, deep nesting. orjson's path decides those.

    The scan checks the structure only as far as it needs to; the rest is checked by
    orjson parsing what is left, and by whoever parses the spans."""
    cdef unsigned char kind[SCAN_MAX_DEPTH]   # '{' or '['
    cdef Role role[SCAN_MAX_DEPTH]
    cdef int depth = 0
    cdef State state = S_OBJ_OPEN
    cdef Role child
    cdef Py_ssize_t p, key, key_len, value_end, index = -1
    cdef bint seen_inputs = False, seen_data = False
    cdef unsigned char c
    p = skip_ws(s, 0, n)
    if p >= n or s[p] != c'{':
        return -1
    kind[0] = c'{'
    role[0] = R_TOP
    p += 1
    while True:
        p = skip_ws(s, p, n)
        if p >= n:
            return -1
        c = s[p]
        if state == S_AFTER or state == S_OBJ_OPEN or state == S_ARR_OPEN:
            if c == kind[depth] + 2:   # '{' + 2 is '}', '[' + 2 is ']'
                p += 1
                if depth == 0:
                    break
                depth -= 1
                state = S_AFTER
                continue
            if state == S_AFTER:
                if c != c',':
                    return -1
                p += 1
                state = S_KEY if kind[depth] == c'{' else S_VALUE
                continue
            state = S_KEY if state == S_OBJ_OPEN else S_VALUE
        if state == S_KEY:
            if c != c'"':
                return -1
            key = p + 1
            p = skip_string(s, p, n)
            if p < 0:
                return -1
            key_len = p - 1 - key
            child = R_OTHER
            if role[depth] == R_TOP or role[depth] == R_INPUT:
                if memchr(s + key, c'\\', <size_t>key_len) != NULL:
                    return -1  # "d\u0061ta" is "data" too
                if role[depth] == R_TOP:
                    if key_len == 6 and memcmp(s + key, b"inputs", 6) == 0:
                        if seen_inputs:
                            return -1
                        seen_inputs = True
                        child = R_INPUTS
                elif key_len == 4 and memcmp(s + key, b"data", 4) == 0:
                    if seen_data:
                        return -1
                    seen_data = True
                    child = R_DATA
            p = skip_ws(s, p, n)
            if p >= n or s[p] != c':':
                return -1
            p = skip_ws(s, p + 1, n)
            if p >= n:
                return -1
            c = s[p]
        else:  # S_VALUE: an array element
            child = R_OTHER
            if role[depth] == R_INPUTS:
                index += 1
                child = R_INPUT
        if child == R_DATA:
            value_end = skip_value(s, p, n)
            if value_end <= p:
                return -1
            spans.append((index, p, value_end))
            p = value_end
            state = S_AFTER
        elif c == c'{' or c == c'[':
            depth += 1
            if depth == SCAN_MAX_DEPTH:
                return -1
            kind[depth] = c
            if child == R_INPUTS and c == c'[':
                role[depth] = R_INPUTS
                index = -1
            elif child == R_INPUT and c == c'{':
                role[depth] = R_INPUT
                seen_data = False
            else:
                role[depth] = R_OTHER
            p += 1
            state = S_OBJ_OPEN if c == c'{' else S_ARR_OPEN
        else:
            value_end = skip_value(s, p, n)
            if value_end <= p:
                return -1
            p = value_end
            state = S_AFTER
    return 0 if skip_ws(s, p, n) == n else -1


def split_input_data(header):
    """(rest, spans) for a request header (any buffer), or None.

    ``spans``: (index into "inputs", start, end) byte offsets of each input's "data"
    value; ``rest``: the header with each of those values replaced by ``null``. None
    when there is no "data" value, or for a header this scan does not vouch for; the
    caller then parses the whole header as before."""
    cdef Py_buffer view
    cdef const unsigned char *s
    cdef list spans = []
    cdef Py_ssize_t size, start, end, prev = 0
    cdef char *out
    PyObject_GetBuffer(header, &view, PyBUF_SIMPLE)
    try:
        s = <const unsigned char *>view.buf
        if _scan(s, view.len, spans) < 0 or not spans:
            return None
        size = view.len
        for _, start, end in spans:
            size -= end - start - 4
        rest = PyBytes_FromStringAndSize(NULL, size)
        out = PyBytes_AS_STRING(rest)
        for _, start, end in spans:
            memcpy(out, s + prev, <size_t>(start - prev))
            out += start - prev
            memcpy(out, b"null", 4)
            out += 4
            prev = end
        memcpy(out, s + prev, <size_t>(view.len - prev))
        return rest, spans
    finally:
        PyBuffer_Release(&view)


# ---------------------------------------------------------------------------------------
# The number-array parser.

cdef enum Code:   # the order matters: unsigned, then signed, then floating point
    T_BOOL
    T_U8
    T_U16
    T_U32
    T_U64
    T_I8
    T_I16
    T_I32
    T_I64
    T_F16         # parsed into doubles; numpy casts them (as np.asarray would)
    T_F32
    T_F64

cdef dict _CODES = {
    "BOOL": T_BOOL, "UINT8": T_U8, "UINT16": T_U16, "UINT32": T_U32, "UINT64": T_U64,
    "INT8": T_I8, "INT16": T_I16, "INT32": T_I32, "INT64": T_I64,
    "FP16": T_F16, "FP32": T_F32, "FP64": T_F64,
}
cdef Py_ssize_t[12] _WIDTH = [1, 1, 2, 4, 8, 1, 2, 4, 8, 8, 4, 8]   # bytes parsed per element


cdef inline int _store_int(NumTok *t, Code code, char *out, Py_ssize_t i) noexcept nogil:
    # Only integer tokens: numpy truncates 1.5 into an int dtype, which is no request's
    # intent, and the reference path keeps deciding that. Out of range: numpy raises.
    cdef uint64_t w = t.w
    cdef int64_t v
    if t.kind != NK_INT:
        return -1
    if code <= T_U64:
        if t.neg and w != 0:
            return -1
        if code == T_U8:
            if w > 0xFF:
                return -1
            (<uint8_t *>out)[i] = <uint8_t>w
        elif code == T_U16:
            if w > 0xFFFF:
                return -1
            (<uint16_t *>out)[i] = <uint16_t>w
        elif code == T_U32:
            if w > 0xFFFFFFFFULL:
                return -1
            (<uint32_t *>out)[i] = <uint32_t>w
        else:
            (<uint64_t *>out)[i] = w
        return 0
    if t.neg:
        if w > (1ULL << 63):
            return -1
        v = <int64_t>(0 - w)   # two's complement: 2**63 becomes INT64_MIN
    else:
        if w > 0x7FFFFFFFFFFFFFFFULL:
            return -1
        v = <int64_t>w
    if code == T_I8:
        if v < -0x80 or v > 0x7F:
            return -1
        (<int8_t *>out)[i] = <int8_t>v
    elif code == T_I16:
        if v < -0x8000 or v > 0x7FFF:
            return -1
        (<int16_t *>out)[i] = <int16_t>v
    elif code == T_I32:
        if v < -0x80000000LL or v > 0x7FFFFFFFLL:
            return -1
        (<int32_t *>out)[i] = <int32_t>v
    else:
        (<int64_t *>out)[i] = v
    return 0


cdef inline int _store(const unsigned char *s, NumTok *t, Code code, char *out,
                       Py_ssize_t i, bint *nonfinite) noexcept nogil:
    cdef double v
    if code >= T_F16:
        if token_double(s, t, &v) < 0:
            return -1
        if t.kind == NK_NAN or t.kind == NK_INF:
            nonfinite[0] = True
        if code == T_F32:
            # Through the double, as numpy casts a Python float: one rounding each way,
            # and out-of-range values become infinities (IEEE conversion).
            (<float *>out)[i] = <float>v
        else:
            (<double *>out)[i] = v
        return 0
    if code == T_BOOL:
        # true/false only: numbers into BOOL follow numpy's truthiness, the reference's.
        if t.kind == NK_TRUE:
            out[i] = 1
        elif t.kind == NK_FALSE:
            out[i] = 0
        else:
            return -1
        return 0
    return _store_int(t, code, out, i)


cdef Py_ssize_t _parse_array(const unsigned char *s, Py_ssize_t p, Py_ssize_t end,
                             Code code, char *out, Py_ssize_t cap,
                             bint *nonfinite) noexcept nogil:
    """Parse the array at s[p] == '[' ending exactly at ``end`` into ``out`` (room for
    ``cap`` elements), row-major; the element count, or -1 where the reference must
    decide. Rectangular only, as np.asarray needs: every array at one depth has the
    same length and numbers sit at one depth only."""
    cdef Py_ssize_t count[MAX_RANK + 1]   # elements so far of the open array at each depth
    cdef Py_ssize_t dims[MAX_RANK + 1]    # the length every array at that depth must have
    cdef int depth = 0, leaf = -1, deepest = 0, d
    cdef Py_ssize_t n = 0, run, fast
    cdef NumTok t
    cdef double v
    for d in range(MAX_RANK + 1):
        dims[d] = -1
    while True:
        # A value at p; just after '[' it may be the ']' of an empty array.
        if s[p] == c'[':
            depth += 1
            if depth > MAX_RANK or (leaf >= 0 and depth > leaf):
                return -1
            if depth > deepest:
                deepest = depth
            count[depth] = 0
            p = skip_ws(s, p + 1, end)
            if p >= end:
                return -1
            if s[p] != c']':
                continue
        else:
            if leaf < 0:
                if deepest > depth:
                    return -1   # [[], 1]
                leaf = depth
            elif depth != leaf:
                return -1       # [[1], 2]
            # The numbers of this array in a tight loop: the depth bookkeeping above is
            # per array, not per number. A '[' among them fails to read as a number,
            # which is the right answer there too.
            run = n
            while True:
                if n == cap:
                    return -1
                fast = read_double_fast(s, p, end, &v) if code >= T_F16 else -1
                if fast >= 0:
                    p = fast
                    if code == T_F32:
                        (<float *>out)[n] = <float>v   # as in _store
                    else:
                        (<double *>out)[n] = v
                else:
                    p = read_number(s, p, end, &t)
                    if p < 0 or _store(s, &t, code, out, n, nonfinite) < 0:
                        return -1
                n += 1
                if p < end and s[p] == c',':
                    p = skip_ws(s, p + 1, end)
                    if p >= end:
                        return -1
                    continue
                break
            count[depth] += n - run
            p = skip_ws(s, p, end)
            if p >= end:
                return -1
        while s[p] == c']':
            if dims[depth] < 0:
                dims[depth] = count[depth]
            elif dims[depth] != count[depth]:
                return -1       # [[1, 2], [3]]
            depth -= 1
            p += 1
            if depth == 0:
                return n if p == end else -1
            count[depth] += 1
            p = skip_ws(s, p, end)
            if p >= end:
                return -1
        if s[p] != c',':
            return -1
        p = skip_ws(s, p + 1, end)
        if p >= end:
            return -1


def parse_data(header, Py_ssize_t start, Py_ssize_t end, str datatype):
    """(raw, nonfinite) for the JSON array in ``header[start:end]``: raw the tensor bytes
    of ``datatype`` (little-endian, row-major), nonfinite whether a NaN or Infinity was
    read (JSON has neither: the reference then parsed the whole header with the stdlib's
    json). None where the reference path must decide (see the module docstring)."""
    cdef Py_buffer view
    cdef const unsigned char *s
    cdef Py_ssize_t cap, n, width
    cdef bint nonfinite = False
    cdef Code code
    cdef char *out
    found = _CODES.get(datatype)
    if found is None:
        return None
    code = <Code>found
    width = _WIDTH[<int>code]
    PyObject_GetBuffer(header, &view, PyBUF_SIMPLE)
    try:
        if not 0 <= start < end <= view.len:
            raise ValueError(f"span {start}:{end} is outside the {view.len}-byte buffer")
        s = <const unsigned char *>view.buf
        if s[start] != c'[':
            return None
        # Each element after the first needs a comma before it: a tight upper bound
        # (exact for rectangular arrays without empty ones), so one allocation.
        cap = tg_count_commas(s + start, end - start) + 1
        raw = PyBytes_FromStringAndSize(NULL, cap * width)
        out = PyBytes_AS_STRING(raw)
        if end - start >= NOGIL_PARSE:
            with nogil:
                n = _parse_array(s, start, end, code, out, cap, &nonfinite)
        else:
            n = _parse_array(s, start, end, code, out, cap, &nonfinite)
    finally:
        PyBuffer_Release(&view)
    if n < 0:
        return None
    if n != cap:
        raw = raw[:n * width]
    if code == T_F16:
        raw = np.frombuffer(raw, "<f8").astype("<f2").tobytes()
    return raw, nonfinite


# ---------------------------------------------------------------------------------------
# Tables, built once at import with Python's exact integers.

cdef _fill_tables():
    global _C_LOCALE
    cdef int i
    cdef Py_ssize_t at = 0
    for i in range(23):
        _P10[i] = float(10 ** i)
    # 5**q as a 128-bit number with its top bit set, truncated; for q < 0 the reciprocal
    # scaled up and rounded up (fast_float's table_generation.py).
    for q in range(POW5_MIN_Q, POW5_MAX_Q + 1):
        if q < 0:
            power5 = 5 ** -q
            z = power5.bit_length()   # 2**(z-1) < 5**-q < 2**z
            if q >= -27:
                c = (1 << (z + 127)) // power5 + 1
            else:
                c = (1 << (2 * z + 128)) // power5 + 1
                c >>= max(0, c.bit_length() - 128)
        else:
            c = 5 ** q
            c = c << (128 - c.bit_length()) if c.bit_length() <= 128 else \
                c >> (c.bit_length() - 128)
        _POW5[at] = c >> 64
        _POW5[at + 1] = c & 0xFFFFFFFFFFFFFFFF
        at += 2
    _C_LOCALE = newlocale(LC_ALL_MASK, "C", NULL)


_fill_tables()
