# C-level helpers for ext/codec.pyx: the protobuf wire reader and writer (inline, no
# Python objects). codec.pyx `include`s this file, as asyncpg's pgproto does with frb.pxd:
# setup.py names the module tensorgate._ext.codec while the sources sit in ext/, so Cython
# would not pair them by name anyway.
#
# The reader follows py-pgproto's frb.pxd: a small struct over a borrowed buffer and
# bounds-checked inline readers. Readers never raise; they record a fault (kind and
# absolute byte offset) and return -1, and the caller, which knows the message and field
# it was reading, turns the fault into a WireError naming both.

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy


cdef extern from *:
    """
    /* The v2 protocol puts tensors on the wire little-endian and the codec copies them
       with memcpy, so a big-endian host would silently swap every value: refuse to build. */
    #if defined(__BYTE_ORDER__) && (__BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__)
    #error "tensorgate codec: little-endian hosts only (tensor bytes are memcpy'd to and from the wire)"
    #endif
    """


cdef enum:
    WT_VARINT = 0
    WT_I64 = 1
    WT_LEN = 2
    WT_I32 = 5


cdef enum WireFault:
    WF_NONE = 0
    WF_TRUNC_VARINT      # a varint runs past the end of its message
    WF_LONG_VARINT       # more than 10 bytes
    WF_TRUNC_FIXED       # fault_arg: 4 or 8
    WF_LENGTH            # fault_arg: declared length, fault_arg2: bytes left
    WF_BAD_TAG           # tag wider than 5 bytes / 32 bits
    WF_FIELD_ZERO
    WF_WIRE_TYPE         # fault_arg: wire type (3, 4, 6, 7), fault_arg2: field number
    WF_PACKED_SIZE       # fault_arg: payload length, fault_arg2: element width
    WF_UTF8


ctypedef struct WireReader:
    const uint8_t *base   # byte 0 of the whole buffer, so fault offsets are absolute
    Py_ssize_t pos
    Py_ssize_t end
    WireFault fault
    Py_ssize_t fault_pos
    uint64_t fault_arg
    uint64_t fault_arg2


cdef inline void wr_init(WireReader *r, const uint8_t *base, Py_ssize_t pos,
                         Py_ssize_t end) noexcept nogil:
    r.base = base
    r.pos = pos
    r.end = end
    r.fault = WF_NONE


cdef inline int wr_fail(WireReader *r, WireFault fault, Py_ssize_t at, uint64_t arg,
                        uint64_t arg2) noexcept nogil:
    r.fault = fault
    r.fault_pos = at
    r.fault_arg = arg
    r.fault_arg2 = arg2
    return -1


cdef inline int wr_varint(WireReader *r, uint64_t *out) noexcept nogil:
    cdef Py_ssize_t p = r.pos
    cdef uint64_t byte, value = 0
    cdef int shift = 0
    if p < r.end and r.base[p] < 0x80:      # one-byte varints dominate: tags, lengths, dims
        out[0] = r.base[p]
        r.pos = p + 1
        return 0
    while True:
        if p >= r.end:
            return wr_fail(r, WF_TRUNC_VARINT, r.pos, 0, 0)
        if shift == 70:
            return wr_fail(r, WF_LONG_VARINT, r.pos, 0, 0)
        byte = r.base[p]
        p += 1
        value |= (byte & 0x7F) << shift     # the 10th byte keeps its low bit, as upb does
        if byte < 0x80:
            break
        shift += 7
    out[0] = value
    r.pos = p
    return 0


cdef inline int wr_tag(WireReader *r, uint32_t *field, uint32_t *wire_type) noexcept nogil:
    """Read a tag; wire types other than 0, 1, 2, 5 (groups included) are faults."""
    cdef Py_ssize_t start = r.pos
    cdef uint64_t tag
    cdef uint32_t wt
    if wr_varint(r, &tag) < 0:
        return -1
    if r.pos - start > 5 or tag > 0xFFFFFFFFu:
        return wr_fail(r, WF_BAD_TAG, start, 0, 0)
    if tag >> 3 == 0:
        return wr_fail(r, WF_FIELD_ZERO, start, 0, 0)
    wt = <uint32_t>(tag & 7)
    if wt != WT_VARINT and wt != WT_I64 and wt != WT_LEN and wt != WT_I32:
        return wr_fail(r, WF_WIRE_TYPE, start, wt, tag >> 3)
    field[0] = <uint32_t>(tag >> 3)
    wire_type[0] = wt
    return 0


cdef inline int wr_len(WireReader *r, Py_ssize_t *start, Py_ssize_t *size) noexcept nogil:
    """Read a length prefix and step over the payload it announces."""
    cdef Py_ssize_t at = r.pos
    cdef uint64_t n
    if wr_varint(r, &n) < 0:
        return -1
    if n > <uint64_t>(r.end - r.pos):
        return wr_fail(r, WF_LENGTH, at, n, <uint64_t>(r.end - r.pos))
    start[0] = r.pos
    size[0] = <Py_ssize_t>n
    r.pos += <Py_ssize_t>n
    return 0


cdef inline int wr_fixed(WireReader *r, Py_ssize_t width, void *out) noexcept nogil:
    if r.end - r.pos < width:
        return wr_fail(r, WF_TRUNC_FIXED, r.pos, <uint64_t>width, 0)
    memcpy(out, r.base + r.pos, <size_t>width)
    r.pos += width
    return 0


cdef inline int wr_skip(WireReader *r, uint32_t wire_type) noexcept nogil:
    cdef uint64_t ignored
    cdef Py_ssize_t s, n
    if wire_type == WT_VARINT:
        return wr_varint(r, &ignored)
    if wire_type == WT_LEN:
        return wr_len(r, &s, &n)
    n = 8 if wire_type == WT_I64 else 4
    if r.end - r.pos < n:
        return wr_fail(r, WF_TRUNC_FIXED, r.pos, <uint64_t>n, 0)
    r.pos += n
    return 0


# A growable int64 array that lives on the stack while it is small (shapes, spans).
# Use it only through a pointer: `data` may point into the struct itself.
ctypedef struct I64Vec:
    int64_t *data
    Py_ssize_t n
    Py_ssize_t cap
    int64_t small[8]


cdef inline void i64vec_init(I64Vec *v) noexcept nogil:
    v.data = v.small
    v.n = 0
    v.cap = 8


cdef inline void i64vec_free(I64Vec *v) noexcept nogil:
    if v.data != v.small:
        free(v.data)
    v.data = v.small
    v.n = 0
    v.cap = 8


cdef inline int i64vec_push(I64Vec *v, int64_t x) except -1:
    cdef int64_t *grown
    if v.n == v.cap:
        if v.data == v.small:
            grown = <int64_t *>malloc(<size_t>(v.cap * 2) * sizeof(int64_t))
            if grown != NULL:
                memcpy(grown, v.small, <size_t>v.n * sizeof(int64_t))
        else:
            grown = <int64_t *>realloc(v.data, <size_t>(v.cap * 2) * sizeof(int64_t))
        if grown == NULL:
            raise MemoryError()
        v.data = grown
        v.cap *= 2
    v.data[v.n] = x
    v.n += 1
    return 0


# Writer side: sizes first, then one exact-size bytes object written front to back.

cdef inline Py_ssize_t varint_size(uint64_t v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline char *put_varint(char *p, uint64_t v) noexcept nogil:
    while v >= 0x80:
        p[0] = <char>((v & 0x7F) | 0x80)
        v >>= 7
        p += 1
    p[0] = <char>v
    return p + 1


cdef inline char *put_bytes_field(char *p, uint8_t tag, const char *src,
                                  Py_ssize_t n) noexcept nogil:
    p[0] = <char>tag
    p = put_varint(p + 1, <uint64_t>n)
    memcpy(p, src, <size_t>n)
    return p + n
