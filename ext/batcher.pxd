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
