# C declarations for ext/batcher.pyx (the native core of the dynamic batcher): POSIX
# threads, which Cython ships no .pxd for. The locking model is described in the module
# docstring of batcher.pyx.
#
# Only C-level declarations live here, cimported by batcher.pyx as `from batcher cimport
# ...`. The extension is built as tensorgate._ext.batcher, and Cython looks a module's
# own .pxd up by that qualified name (tensorgate/_ext/batcher.pxd), never as
# ext/batcher.pxd: the cdef classes therefore declare their fields in the .pyx. A .pxd
# that declared them here would be cimported as a separate module named `batcher`,
# which does not exist at run time.

from posix.time cimport timespec
from posix.types cimport clockid_t


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef struct pthread_condattr_t:
        pass

    int pthread_mutex_init(pthread_mutex_t* mutex, const pthread_mutexattr_t* attr)
    int pthread_mutex_destroy(pthread_mutex_t* mutex)
    int pthread_mutex_lock(pthread_mutex_t* mutex)
    int pthread_mutex_unlock(pthread_mutex_t* mutex)

    int pthread_condattr_init(pthread_condattr_t* attr)
    int pthread_condattr_destroy(pthread_condattr_t* attr)
    int pthread_condattr_setclock(pthread_condattr_t* attr, clockid_t clock_id)
    int pthread_cond_init(pthread_cond_t* cond, const pthread_condattr_t* attr)
    int pthread_cond_destroy(pthread_cond_t* cond)
    int pthread_cond_wait(pthread_cond_t* cond, pthread_mutex_t* mutex)
    int pthread_cond_timedwait(
        pthread_cond_t* cond, pthread_mutex_t* mutex, const timespec* abstime
    )
    int pthread_cond_signal(pthread_cond_t* cond)
    int pthread_cond_broadcast(pthread_cond_t* cond)


# Sequentially consistent atomics (GCC/Clang builtins) for the lock-free fast paths:
# the event loop thread enqueues without touching the mutex unless a worker sleeps.
cdef extern from *:
    """
    static inline int tg_cas_int(int *p, int expected, int desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                           __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    static inline int tg_load_int(int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline void tg_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    static inline int tg_add_int(int *p, int v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
    static inline unsigned long long tg_load_u64(unsigned long long *p) {
        return __atomic_load_n(p, __ATOMIC_SEQ_CST);
    }
    static inline void tg_inc_u64(unsigned long long *p) {
        __atomic_add_fetch(p, 1ULL, __ATOMIC_SEQ_CST);
    }
    """
    int tg_cas_int(int *p, int expected, int desired) nogil
    int tg_load_int(int *p) nogil
    void tg_store_int(int *p, int v) nogil
    int tg_add_int(int *p, int v) nogil
    unsigned long long tg_load_u64(unsigned long long *p) nogil
    void tg_inc_u64(unsigned long long *p) nogil
