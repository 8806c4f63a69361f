# cython: language_level=3
"""Per-row sums and sums of squares in one pass over memory, GIL released.

Drift monitoring summarises every served row of a large tensor (an image, an embedding)
by its mean and L2 norm. Two numpy reductions read the rows twice and, on rows that
left the cache, from memory twice; this reads each row once, in SIMD lanes (the
compiler's generic vector extension, so SSE2 on any x86-64 and wider where built for
it), with float32 lanes added into float64 every ``BLOCK`` elements so a long row keeps
its precision.
"""

cimport numpy as cnp

cnp.import_array()

cdef extern from *:
    """
    #include <stddef.h>
    #include <string.h>
    #define TG_BLOCK 1024
    typedef float tg_v4f __attribute__((vector_size(16)));
    typedef double tg_v2d __attribute__((vector_size(16)));

    /* One float32 row: *sum and *sumsq of its n values. Eight float lanes in two
       vectors accumulate a block of TG_BLOCK values, then go into double totals. */
    static void tg_moments_f32(const char *row, ptrdiff_t n, double *sum, double *sumsq) {
        double s = 0.0, q = 0.0;
        ptrdiff_t i = 0;
        while (i + 8 <= n) {
            ptrdiff_t end = i + TG_BLOCK;
            if (end > n) end = n;
            tg_v4f a0 = {0, 0, 0, 0}, a1 = {0, 0, 0, 0}, b0 = {0, 0, 0, 0}, b1 = {0, 0, 0, 0};
            for (; i + 8 <= end; i += 8) {
                tg_v4f x0, x1;
                memcpy(&x0, row + 4 * i, 16);  /* unaligned loads */
                memcpy(&x1, row + 4 * i + 16, 16);
                a0 += x0; a1 += x1;
                b0 += x0 * x0; b1 += x1 * x1;
            }
            tg_v4f a = a0 + a1, b = b0 + b1;
            s += (double)a[0] + (double)a[1] + (double)a[2] + (double)a[3];
            q += (double)b[0] + (double)b[1] + (double)b[2] + (double)b[3];
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


def row_moments(arrays, cnp.ndarray sums not None, cnp.ndarray sumsq not None):
    """Fill ``sums`` and ``sumsq`` (float64, C-contiguous) with the sum and the sum of
    squares of every row of the 2-D float32 or float64 arrays in the list ``arrays``,
    in order (the rows of the first array, then the second's...). Each array's rows
    must each be contiguous (any row stride). Raises ValueError for anything else,
    before writing: the caller then takes numpy's way."""
    cdef list items = list(arrays)
    cdef Py_ssize_t count = len(items), k, i, total = 0
    cdef cnp.ndarray array
    cdef int kind
    for k in range(count):
        if not isinstance(items[k], cnp.ndarray):
            raise ValueError("row_moments takes numpy arrays")
        array = <cnp.ndarray>items[k]
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
    for out in (sums, sumsq):
        if (cnp.PyArray_TYPE(out) != cnp.NPY_FLOAT64 or not cnp.PyArray_IS_C_CONTIGUOUS(out)
                or cnp.PyArray_SIZE(out) < total or not cnp.PyArray_ISWRITEABLE(out)):
            raise ValueError("sums and sumsq must be writable C-contiguous float64 of "
                             "at least one value per row")
    cdef double* s = <double*>cnp.PyArray_DATA(sums)
    cdef double* q = <double*>cnp.PyArray_DATA(sumsq)
    cdef const char* data
    cdef Py_ssize_t rows, width, row_stride
    cdef bint single
    for k in range(count):
        array = <cnp.ndarray>items[k]
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
