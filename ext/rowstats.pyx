# cython: language_level=3
"""Per-row sums and sums of squares in one pass over memory, GIL released.

Drift monitoring summarises every served row of a large tensor (an image, an embedding)
by its mean and L2 norm. Two numpy reductions read the rows twice and, on rows that
left the cache, from memory twice; this reads each row once, in SIMD lanes (the
compiler's generic vector extension), with float32 lanes added into float64 every
``BLOCK`` elements so a long row keeps its precision. On x86-64 the float32 kernel is
built twice, for AVX2+FMA and for the baseline (SSE2), and the loader picks the one the
CPU runs (GCC's target_clones): a wheel or image built on one machine still runs on
any other, and a convnet row (12,288 floats) costs about half as much where AVX2 is.
"""

cimport numpy as cnp
from libc.math cimport sqrt

cnp.import_array()

cdef extern from *:
    """
    #include <stddef.h>
    #include <string.h>
    #define TG_BLOCK 1024
    typedef float tg_v8f __attribute__((vector_size(32)));
    typedef double tg_v2d __attribute__((vector_size(16)));
    #if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    #define TG_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
    #else
    #define TG_CLONES
    #endif

    /* One float32 row: *sum and *sumsq of its n values. Sixteen float lanes in two
       vectors (one AVX register each, two SSE registers each on the baseline)
       accumulate a block of TG_BLOCK values, then go into double totals. */
    TG_CLONES
    static void tg_moments_f32(const char *row, ptrdiff_t n, double *sum, double *sumsq) {
        double s = 0.0, q = 0.0;
        ptrdiff_t i = 0;
        while (i + 16 <= n) {
            ptrdiff_t end = i + TG_BLOCK;
            if (end > n) end = n;
            tg_v8f a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
            for (; i + 16 <= end; i += 16) {
                tg_v8f x0, x1;
                memcpy(&x0, row + 4 * i, 32);  /* unaligned loads */
                memcpy(&x1, row + 4 * i + 32, 32);
                a0 += x0; a1 += x1;
                b0 += x0 * x0; b1 += x1 * x1;
            }
            tg_v8f a = a0 + a1, b = b0 + b1;
            for (int k = 0; k < 8; k++) {
                s += (double)a[k];
                q += (double)b[k];
            }
        }
        for (; i < n; i++) {
            float x;
            memcpy(&x, row + 4 * i, 4);
            s += x; q += (double)x * x;
        }
        *sum = s; *sumsq = q;
    }

    static void tg_moments_f64(const char *row, ptrdiff_t n, double *sum, double *sumsq) {
        tg_v2d a0 = {0, 0}, a1 = {0, 0}, b0 = {0, 0}, b1 = {0, 0};
        ptrdiff_t i = 0;
        for (; i + 4 <= n; i += 4) {
            tg_v2d x0, x1;
            memcpy(&x0, row + 8 * i, 16);
            memcpy(&x1, row + 8 * i + 16, 16);
            a0 += x0; a1 += x1;
            b0 += x0 * x0; b1 += x1 * x1;
        }
        tg_v2d a = a0 + a1, b = b0 + b1;
        double s = a[0] + a[1], q = b[0] + b[1];
        for (; i < n; i++) {
            double x;
            memcpy(&x, row + 8 * i, 8);
            s += x; q += x * x;
        }
        *sum = s; *sumsq = q;
    }
    """
    void tg_moments_f32(const char *row, Py_ssize_t n, double *sum, double *sumsq) nogil
    void tg_moments_f64(const char *row, Py_ssize_t n, double *sum, double *sumsq) nogil


cdef Py_ssize_t _rows_of(list items) except -1:
    """The rows of all of ``items`` once each is checked: 2-D, float32 or float64,
    native byte order, rows each contiguous; ValueError naming what is not."""
    cdef Py_ssize_t total = 0
    cdef cnp.ndarray array
    cdef int kind
    for item in items:
        if not isinstance(item, cnp.ndarray):
            raise ValueError("row_moments takes numpy arrays")
        array = <cnp.ndarray>item
        if cnp.PyArray_NDIM(array) != 2:
            raise ValueError("row_moments takes 2-D arrays")
        kind = cnp.PyArray_TYPE(array)
        if kind != cnp.NPY_FLOAT32 and kind != cnp.NPY_FLOAT64:
            raise ValueError(f"row_moments takes float32 or float64, not {array.dtype}")
        if not cnp.PyArray_ISNOTSWAPPED(array):
            raise ValueError("row_moments takes native byte order")
        if (cnp.PyArray_DIM(array, 1) > 1
                and cnp.PyArray_STRIDE(array, 1) != cnp.PyArray_ITEMSIZE(array)):
            raise ValueError("row_moments takes rows that are each contiguous")
        total += cnp.PyArray_DIM(array, 0)
    return total


cdef void _moments(list items, double* s, double* q) noexcept:
    """Sums and sums of squares of every row of the checked ``items`` into s and q."""
    cdef cnp.ndarray array
    cdef const char* data
    cdef Py_ssize_t rows, width, row_stride, i
    cdef bint single
    for item in items:
        array = <cnp.ndarray>item
        data = <const char*>cnp.PyArray_DATA(array)
        rows = cnp.PyArray_DIM(array, 0)
        width = cnp.PyArray_DIM(array, 1)
        row_stride = cnp.PyArray_STRIDE(array, 0)
        single = cnp.PyArray_TYPE(array) == cnp.NPY_FLOAT32
        with nogil:
            for i in range(rows):
                if single:
                    tg_moments_f32(data + i * row_stride, width, s + i, q + i)
                else:
                    tg_moments_f64(data + i * row_stride, width, s + i, q + i)
        s += rows
        q += rows


def row_moments(arrays, cnp.ndarray sums not None, cnp.ndarray sumsq not None):
    """Fill ``sums`` and ``sumsq`` (float64, C-contiguous) with the sum and the sum of
    squares of every row of the 2-D float32 or float64 arrays in the list ``arrays``,
    in order (the rows of the first array, then the second's...). Each array's rows
    must each be contiguous (any row stride). Raises ValueError for anything else,
    before writing: the caller then takes numpy's way."""
    cdef list items = list(arrays)
    cdef Py_ssize_t total = _rows_of(items)
    for out in (sums, sumsq):
        if (cnp.PyArray_TYPE(out) != cnp.NPY_FLOAT64 or not cnp.PyArray_IS_C_CONTIGUOUS(out)
                or cnp.PyArray_SIZE(out) < total or not cnp.PyArray_ISWRITEABLE(out)):
            raise ValueError("sums and sumsq must be writable C-contiguous float64 of "
                             "at least one value per row")
    _moments(items, <double*>cnp.PyArray_DATA(sums), <double*>cnp.PyArray_DATA(sumsq))


def row_summaries(arrays, cnp.ndarray out not None, Py_ssize_t mean_col,
                  Py_ssize_t norm_col, Py_ssize_t length_col):
    """Drift's per-row summaries of large rows in one call: for every row of the 2-D
    float32/float64 ``arrays`` (as ``row_moments`` takes them), in order, write into
    the C-contiguous float64 matrix ``out`` (a row per array row) its mean at column
    ``mean_col`` (NaN for an empty row), its L2 norm at ``norm_col`` and its element
    count at ``length_col``; a column of -1 is not written. One pass per row, GIL
    released; ValueError as ``row_moments`` (before writing) for what it refuses."""
    cdef list items = list(arrays)
    cdef Py_ssize_t total = _rows_of(items), cols, k, i, rows, width
    if (cnp.PyArray_TYPE(out) != cnp.NPY_FLOAT64 or not cnp.PyArray_IS_C_CONTIGUOUS(out)
            or cnp.PyArray_NDIM(out) != 2 or not cnp.PyArray_ISWRITEABLE(out)
            or cnp.PyArray_DIM(out, 0) < total):
        raise ValueError("out must be a writable C-contiguous 2-D float64 matrix with a "
                         "row per array row")
    cols = cnp.PyArray_DIM(out, 1)
    for k in (mean_col, norm_col, length_col):
        if k < -1 or k >= cols:
            raise ValueError(f"column {k} is outside out's {cols} columns")
    cdef cnp.ndarray sums = cnp.PyArray_EMPTY(1, [total], cnp.NPY_FLOAT64, 0)
    cdef cnp.ndarray sumsq = cnp.PyArray_EMPTY(1, [total], cnp.NPY_FLOAT64, 0)
    cdef double* s = <double*>cnp.PyArray_DATA(sums)
    cdef double* q = <double*>cnp.PyArray_DATA(sumsq)
    cdef double* o = <double*>cnp.PyArray_DATA(out)
    cdef double nan = float("nan")
    _moments(items, s, q)
    for item in items:
        rows = cnp.PyArray_DIM(<cnp.ndarray>item, 0)
        width = cnp.PyArray_DIM(<cnp.ndarray>item, 1)
        for i in range(rows):
            if mean_col >= 0:
                o[mean_col] = s[i] / width if width else nan
            if norm_col >= 0:
                o[norm_col] = sqrt(q[i])
            if length_col >= 0:
                o[length_col] = width
            o += cols
        s += rows
        q += rows
