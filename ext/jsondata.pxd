# C-level helpers for ext/jsondata.pyx: JSON byte scanning and number parsing that never
# touch a Python object, so the array parser can run with the GIL released.
# jsondata.pyx `include`s this file, as codec.pyx does with codec.pxd (setup.py names the
# module tensorgate._ext.jsondata while the sources sit in ext/).
#
# Readers take (s, p, end) over a borrowed buffer and return the position after what they
# read, or -1 when the bytes are not what they should be. They never raise: the caller
# answers "cannot fast-parse" and the request takes the orjson path, which words the error.

from libc.math cimport INFINITY, NAN
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy


cdef extern from *:
    """
    #include <locale.h>
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #if defined(__APPLE__)
    #include <xlocale.h>
    #endif

    /* The eight-digit SWAR reader below loads bytes into a uint64_t and expects the
       first byte in the low bits. */
    #if defined(__BYTE_ORDER__) && (__BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__)
    #error "tensorgate jsondata: little-endian hosts only (SWAR digit parsing)"
    #endif

    /* Low 64 bits of a * b; the high 64 bits go to *hi. */
    static inline uint64_t tg_mul128(uint64_t a, uint64_t b, uint64_t *hi) {
        unsigned __int128 p = (unsigned __int128)a * b;
        *hi = (uint64_t)(p >> 64);
        return (uint64_t)p;
    }
    static inline int tg_clz64(uint64_t x) { return __builtin_clzll(x); }
    static inline int tg_ctz64(uint64_t x) { return __builtin_ctzll(x); }
    static inline double tg_double_from_bits(uint64_t bits) {
        double d;
        memcpy(&d, &bits, sizeof d);
        return d;
    }
    static inline uint64_t tg_load8(const unsigned char *p) {
        uint64_t v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    /* Whether a 32-byte block holds a byte the value skipper must look at: a quote or
       one of [ ] { } (c & 0xD9 == 0x59 also matches Y _ y DEL; those only cost a closer
       look). Written without an early exit so the compiler vectorizes it. */
    static inline int tg_block_has_special(const unsigned char *p) {
        unsigned char hit = 0;
        for (int i = 0; i < 32; i++)
            hit |= (unsigned char)(((p[i] & 0xD9) == 0x59) | (p[i] == 0x22));
        return hit;
    }
    static inline Py_ssize_t tg_count_commas(const unsigned char *p, Py_ssize_t n) {
        Py_ssize_t count = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            count += p[i] == ',';
        return count;
    }
    """
    uint64_t tg_mul128(uint64_t a, uint64_t b, uint64_t *hi) noexcept nogil
    int tg_clz64(uint64_t x) noexcept nogil
    int tg_ctz64(uint64_t x) noexcept nogil
    double tg_double_from_bits(uint64_t bits) noexcept nogil
    uint64_t tg_load8(const unsigned char *p) noexcept nogil
    bint tg_block_has_special(const unsigned char *p) noexcept nogil
    Py_ssize_t tg_count_commas(const unsigned char *p, Py_ssize_t n) noexcept nogil

    ctypedef void *locale_t
    int LC_ALL_MASK
    locale_t newlocale(int mask, const char *locale, locale_t base) nogil
    double strtod_l(const char *s, char **end, locale_t loc) nogil


# ---------------------------------------------------------------------------------------
# Structure: whitespace, strings, skipping a value.

cdef inline bint is_ws(unsigned char c) noexcept nogil:
    return c == c' ' or c == c'\n' or c == c'\r' or c == c'\t'  # JSON's four, no others


cdef inline Py_ssize_t skip_ws(const unsigned char *s, Py_ssize_t p,
                               Py_ssize_t end) noexcept nogil:
    while p < end and is_ws(s[p]):
        p += 1
    return p


cdef inline Py_ssize_t skip_string(const unsigned char *s, Py_ssize_t p,
                                   Py_ssize_t end) noexcept nogil:
    """p at the opening quote; the position after the closing one. An escape's first
    byte after the backslash is never a quote that ends the string (\\uXXXX's hex digits
    never are), so stepping over one byte is enough to find the end."""
    p += 1
    while p < end:
        if s[p] == c'"':
            return p + 1
        if s[p] == c'\\':
            p += 2
        else:
            p += 1
    return -1


cdef inline Py_ssize_t skip_value(const unsigned char *s, Py_ssize_t p,
                                  Py_ssize_t end) noexcept nogil:
    """The end of the value at p: a string, a container up to its matching bracket, or
    a scalar up to the next delimiter. Brackets are counted, not paired: the span found
    is always validated afterwards (by the number parser or by orjson), so a mismatched
    pair inside it only sends the request down the orjson path."""
    cdef Py_ssize_t depth = 0
    cdef unsigned char c
    if s[p] == c'"':
        return skip_string(s, p, end)
    if s[p] != c'[' and s[p] != c'{':
        while p < end and not is_ws(s[p]) and s[p] != c',' and s[p] != c']' \
                and s[p] != c'}':
            p += 1
        return p
    while p < end:
        # A large numeric array is mostly digits: step over blocks without any bracket
        # or quote 32 bytes at a time.
        while p + 32 <= end and not tg_block_has_special(s + p):
            p += 32
        if p == end:
            break
        c = s[p]
        if c == c'"':
            p = skip_string(s, p, end)
            if p < 0:
                return -1
            continue
        if c == c'[' or c == c'{':
            depth += 1
        elif c == c']' or c == c'}':
            depth -= 1
            if depth == 0:
                return p + 1
        p += 1
    return -1


# ---------------------------------------------------------------------------------------
# Numbers: one token, read into a decimal significand and exponent, then a double.

cdef enum NumKind:
    NK_INT        # an integer token whose magnitude fits a uint64: w, neg
    NK_BIGINT     # an integer token beyond uint64 (numpy's rules for those: orjson path)
    NK_DEC        # fraction and/or exponent, <= 19 significant digits: w * 10**q, neg
    NK_LONG       # a decimal with more digits than w holds: strtod on the token text
    NK_NAN
    NK_INF        # neg for -Infinity
    NK_TRUE
    NK_FALSE

ctypedef struct NumTok:
    NumKind kind
    bint neg
    uint64_t w
    int64_t q
    Py_ssize_t start   # the token text, for NK_LONG
    Py_ssize_t end

cdef enum:
    MAX_EXP_DIGITS_VALUE = 1000000000   # exponents beyond this go to strtod
    LONG_TOKEN_MAX = 1023               # longer NK_LONG tokens: orjson path

cdef uint64_t _EIGHT_ZEROS = 0x3030303030303030ULL


cdef inline bint is_digit(unsigned char c) noexcept nogil:
    return <unsigned char>(c - c'0') < 10


cdef inline int leading_digits(uint64_t v) noexcept nogil:
    """How many of the 8 bytes in v (first byte lowest) are ASCII digits before the first
    other byte. Adding 0x46 carries into a byte's top bit for bytes above '9', and
    subtracting 0x30 borrows into it for bytes below '0'; carries and borrows only leave
    a byte that is itself flagged, so the lowest flag is the first non-digit."""
    cdef uint64_t flags = ((v + 0x4646464646464646ULL) | (v - _EIGHT_ZEROS)) \
        & 0x8080808080808080ULL
    return 8 if flags == 0 else tg_ctz64(flags) >> 3


cdef inline uint64_t eight_digits_value(uint64_t v) noexcept nogil:
    # Pairs, then quads, then the eight, each step a multiply (fast_float's SWAR step).
    v -= _EIGHT_ZEROS
    v = (v * 10) + (v >> 8)
    v = (((v & 0x000000FF000000FFULL) * 0x000F424000000064ULL)
         + (((v >> 16) & 0x000000FF000000FFULL) * 0x0000271000000001ULL)) >> 32
    return v & 0xFFFFFFFFULL


cdef uint64_t[9] _POW10_INT = [1, 10, 100, 1000, 10000, 100000, 1000000, 10000000,
                               100000000]


cdef inline Py_ssize_t read_digits(const unsigned char *s, Py_ssize_t p, Py_ssize_t end,
                                   uint64_t *w) noexcept nogil:
    """Accumulate the digits at p into *w (wrapping: the caller counts digits and only
    trusts *w up to 19 of them); the position after the last digit.

    Eight bytes at a time while eight are left, whatever the number of digits among
    them: a run of 1 to 7 digits is shifted to the top of the word behind '0' bytes,
    so number lengths, which vary element to element, cost no mispredicted branch."""
    cdef uint64_t acc = w[0], v
    cdef int nd
    while p + 8 <= end:
        v = tg_load8(s + p)
        nd = leading_digits(v)
        if nd == 8:
            acc = acc * 100000000ULL + eight_digits_value(v)
            p += 8
            continue
        if nd:
            v = (v << (64 - 8 * nd)) | (_EIGHT_ZEROS >> (8 * nd))
            acc = acc * _POW10_INT[nd] + eight_digits_value(v)
            p += nd
        w[0] = acc
        return p
    while p < end and is_digit(s[p]):
        acc = acc * 10 + (s[p] - c'0')
        p += 1
    w[0] = acc
    return p


cdef inline bint matches(const unsigned char *s, Py_ssize_t p, Py_ssize_t end,
                         const char *word, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if end - p < n:
        return False
    for i in range(n):
        if s[p + i] != <unsigned char>word[i]:
            return False
    return True


cdef inline Py_ssize_t read_literal(const unsigned char *s, Py_ssize_t p, Py_ssize_t end,
                                    NumTok *t) noexcept nogil:
    # NaN and Infinity are not JSON, but the stdlib's json (today's fallback) reads them
    # and clients write them; exactly its spellings: no -NaN, no +Infinity.
    if matches(s, p, end, b"Infinity", 8):
        t.kind = NK_INF
        return p + 8
    if t.neg:
        return -1
    if matches(s, p, end, b"NaN", 3):
        t.kind = NK_NAN
        return p + 3
    if matches(s, p, end, b"true", 4):
        t.kind = NK_TRUE
        return p + 4
    if matches(s, p, end, b"false", 5):
        t.kind = NK_FALSE
        return p + 5
    return -1


cdef inline bint exact_u64(const unsigned char *s, Py_ssize_t p, Py_ssize_t end,
                           uint64_t *out) noexcept nogil:
    """The digits in [p, end) as a uint64, checked for overflow (20-digit integers)."""
    cdef uint64_t v = 0, d
    while p < end:
        d = s[p] - c'0'
        if v > (0xFFFFFFFFFFFFFFFFULL - d) // 10:
            return False
        v = v * 10 + d
        p += 1
    out[0] = v
    return True


cdef inline Py_ssize_t read_number(const unsigned char *s, Py_ssize_t p, Py_ssize_t end,
                                   NumTok *t) noexcept nogil:
    """Read one JSON number (RFC 8259's grammar exactly: no leading zeros, no '+', no bare
    '.') or literal at p into *t; the position after it, or -1. The caller checks that a
    delimiter follows, which is what rejects "01" or "1x"."""
    cdef Py_ssize_t int_start, frac_start, frac_n = 0, exp_start, digits, i
    cdef uint64_t w = 0
    cdef int64_t exp = 0
    cdef bint exp_neg = False, is_int = True
    cdef unsigned char c
    t.start = p
    t.end = p
    t.w = 0
    t.q = 0
    # Signs are random in real data: a branch on them would mispredict half the time.
    t.neg = p < end and s[p] == c'-'
    p += t.neg
    if p >= end:
        return -1
    c = s[p]
    if not is_digit(c):
        return read_literal(s, p, end, t)
    int_start = p
    p = read_digits(s, p, end, &w)
    digits = p - int_start
    if c == c'0' and digits > 1:
        return -1   # JSON has no leading zeros
    if p < end and s[p] == c'.':
        is_int = False
        frac_start = p + 1
        p = read_digits(s, frac_start, end, &w)
        frac_n = p - frac_start
        if frac_n == 0:
            return -1
        digits += frac_n
        if digits > 19 and s[int_start] == c'0':
            # "0.000123": the leading zeros carry no value and do not count.
            digits -= 1
            i = frac_start
            while i < p and s[i] == c'0':
                digits -= 1
                i += 1
    if p < end and (s[p] == c'e' or s[p] == c'E'):
        is_int = False
        p += 1
        if p < end and (s[p] == c'-' or s[p] == c'+'):
            exp_neg = s[p] == c'-'
            p += 1
        exp_start = p
        while p < end and is_digit(s[p]):
            if exp < MAX_EXP_DIGITS_VALUE:
                exp = exp * 10 + (s[p] - c'0')
            p += 1
        if p == exp_start:
            return -1
        if exp_neg:
            exp = -exp
    t.end = p
    if is_int:
        t.w = w
        if digits <= 19:
            t.kind = NK_INT
        elif digits == 20 and exact_u64(s, int_start, p, &t.w):
            t.kind = NK_INT
        else:
            t.kind = NK_BIGINT
    elif digits > 19 or exp >= MAX_EXP_DIGITS_VALUE or exp <= -MAX_EXP_DIGITS_VALUE:
        t.kind = NK_LONG
    else:
        t.kind = NK_DEC
        t.w = w
        t.q = exp - frac_n
    return p


# ---------------------------------------------------------------------------------------
# Decimal to double, correctly rounded, as the reference (orjson, or Python's float for
# NaN bodies) rounds: Clinger's exact fast path, then Eisel-Lemire (fast_float's
# compute_float, which the Mushtak-Lemire proof shows needs no fallback for a 64-bit
# significand), then strtod in the C locale for more than 19 digits.

cdef double _P10[23]            # 1e0 .. 1e22: exact doubles (filled at import)
cdef uint64_t _POW5[1302]       # 5**q for q in -342..308, 128-bit (filled at import)
cdef locale_t _C_LOCALE = NULL  # strtod_l's locale: never the process' LC_NUMERIC

cdef enum:
    POW5_MIN_Q = -342           # below: w * 10**q < 2**-1075 rounds to 0 (w < 2**64)
    POW5_MAX_Q = 308            # above: w * 10**q >= 1e309 is infinite


cdef inline double eisel_lemire(uint64_t w, int64_t q) noexcept nogil:
    """w * 10**q correctly rounded (round half to even), for 0 < w < 2**64."""
    cdef uint64_t hi, lo, hi2, mantissa
    cdef int lz, upperbit, shift
    cdef int64_t power2
    cdef Py_ssize_t index
    if q < POW5_MIN_Q:
        return 0.0
    if q > POW5_MAX_Q:
        return INFINITY
    lz = tg_clz64(w)
    w <<= lz
    index = 2 * (q - POW5_MIN_Q)
    lo = tg_mul128(w, _POW5[index], &hi)
    if (hi & 0x1FF) == 0x1FF:
        # The 55 bits we keep might still change: add the next 64 bits of 5**q.
        tg_mul128(w, _POW5[index + 1], &hi2)
        lo += hi2
        if hi2 > lo:
            hi += 1
    upperbit = <int>(hi >> 63)
    shift = upperbit + 64 - 52 - 3
    mantissa = hi >> shift
    # floor(q * log2(10)) + 63, then the double's bias (1023)
    power2 = ((217706 * q) >> 16) + 63 + upperbit - lz + 1023
    if power2 <= 0:  # subnormal
        if -power2 + 1 >= 64:
            return 0.0
        mantissa >>= -power2 + 1
        mantissa += mantissa & 1
        mantissa >>= 1
        # Rounding up may carry into the smallest normal: the OR below gives it.
        power2 = 0 if mantissa < (1ULL << 52) else 1
        return tg_double_from_bits(mantissa | (<uint64_t>power2 << 52))
    # Exactly halfway between two doubles (only possible for small |q|): to even.
    if lo <= 1 and -4 <= q <= 23 and (mantissa & 3) == 1 and (mantissa << shift) == hi:
        mantissa &= ~1ULL
    mantissa += mantissa & 1
    mantissa >>= 1
    if mantissa >= (2ULL << 52):
        mantissa = 1ULL << 52
        power2 += 1
    mantissa &= ~(1ULL << 52)
    if power2 >= 0x7FF:
        return INFINITY
    return tg_double_from_bits(mantissa | (<uint64_t>power2 << 52))


cdef inline double decimal_to_double(uint64_t w, int64_t q) noexcept nogil:
    if w == 0:
        return 0.0
    if w <= (1ULL << 53) and -22 <= q <= 22:
        # Clinger: both operands are exact doubles, so IEEE's one rounding is the answer.
        if q >= 0:
            return <double>w * _P10[q]
        return <double>w / _P10[-q]
    return eisel_lemire(w, q)


cdef inline int token_double(const unsigned char *s, NumTok *t, double *out) noexcept nogil:
    """The token's value as the reference gets it (a Python float, or a Python int that
    numpy converts with one rounding); -1 for a token it must decide (NK_BIGINT: numpy
    raises on ints past 2**1024) or that is no number."""
    cdef char text[LONG_TOKEN_MAX + 1]
    cdef Py_ssize_t n
    cdef double v
    if t.kind == NK_DEC:
        v = decimal_to_double(t.w, t.q)
        out[0] = -v if t.neg else v
    elif t.kind == NK_INT:
        # uint64 -> double rounds once, to nearest even, like PyLong_AsDouble; and the
        # integer -0 is 0, whose double is +0.0.
        v = <double>t.w
        out[0] = -v if t.neg and t.w != 0 else v
    elif t.kind == NK_LONG:
        n = t.end - t.start
        if n > LONG_TOKEN_MAX or _C_LOCALE == NULL:
            return -1
        memcpy(text, s + t.start, <size_t>n)
        text[n] = 0
        out[0] = strtod_l(text, NULL, _C_LOCALE)
    elif t.kind == NK_NAN:
        out[0] = NAN
    elif t.kind == NK_INF:
        out[0] = -INFINITY if t.neg else INFINITY
    else:
        return -1
    return 0


cdef inline Py_ssize_t read_double_fast(const unsigned char *s, Py_ssize_t p,
                                        Py_ssize_t end, double *out) noexcept nogil:
    """The common number straight to its double: [-]int[.frac][(e|E)[+-]exp] with at
    most 19 digits and a short exponent, as token_double(read_number(...)) would give
    it; -1 for anything else (the caller then asks read_number, which knows the rest).
    One pass and no token record: this is the per-element cost of a float tensor."""
    cdef uint64_t w = 0
    cdef int64_t q = 0, e = 0
    cdef Py_ssize_t start, frac, digits, exp_start
    cdef bint neg, exp_neg, is_int = True
    cdef double v
    neg = s[p] == c'-'
    p += neg
    start = p
    p = read_digits(s, p, end, &w)
    digits = p - start
    if digits == 0 or (s[start] == c'0' and digits > 1):
        return -1
    if p < end and s[p] == c'.':
        is_int = False
        frac = p + 1
        p = read_digits(s, frac, end, &w)
        if p == frac:
            return -1
        q = frac - p
        digits += p - frac
    if digits > 19:
        return -1
    if p < end and (s[p] | 0x20) == c'e':
        is_int = False
        p += 1
        exp_neg = p < end and s[p] == c'-'
        if p < end and (s[p] == c'-' or s[p] == c'+'):
            p += 1
        exp_start = p
        while p < end and is_digit(s[p]) and p - exp_start < 4:
            e = e * 10 + (s[p] - c'0')
            p += 1
        if p == exp_start or (p < end and is_digit(s[p])):
            return -1
        q += -e if exp_neg else e
    if is_int:
        # The integer -0 is 0, whose double is +0.0 (the reference converts an int).
        v = <double>w
        out[0] = -v if neg and w != 0 else v
    else:
        v = decimal_to_double(w, q)
        out[0] = -v if neg else v
    return p
