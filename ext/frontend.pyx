# cython: language_level=3
# distutils: language = c++
"""Python face of the native gRPC front end (ext/native/frontend.h says what and why).

``NativeFrontend`` listens on the public port with grpc++. The event loop watches its
``fileno()`` and calls ``drain()`` when it is readable: every ModelInfer call that arrived
meanwhile comes back as a ``NativeCall``, which also plays the part of the grpc.aio
servicer context that the inference handler reads (metadata, peer, deadline, abort).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libcpp cimport bool as cbool
from libcpp.pair cimport pair
from libcpp.string cimport string
from libcpp.vector cimport vector


cdef extern from "native/frontend.h" namespace "grpc" nogil:
    cdef cppclass GenericCallbackServerContext:
        pass

    string Version()

    cdef cppclass ByteBuffer:
        size_t Length()


cdef extern from "native/frontend.h" namespace "tensorgate" nogil:
    cdef cppclass FrontendConfig:
        string address, backend, infer_method, stream_method
        int max_receive_bytes, max_send_bytes, max_waiting
        cbool tls, require_client_cert
        string cert_chain_pem, private_key_pem, client_ca_pem

    void CopyBytes(const ByteBuffer& buffer, char* dst)
    string Peer(GenericCallbackServerContext* ctx)
    void Metadata(GenericCallbackServerContext* ctx, vector[pair[string, string]]* out)
    cbool MetadataValue(GenericCallbackServerContext* ctx, const string& key, string* out)
    double TimeRemaining(GenericCallbackServerContext* ctx, cbool* has_deadline)

    cdef cppclass InferCall:
        uint64_t id()
        size_t request_size()
        void copy_request(char* dst)
        GenericCallbackServerContext* context()
        void Complete(const char* data, size_t size)
        void Fail(int code, const string& message)

    cdef cppclass StreamCall:
        uint64_t id()
        const vector[pair[string, string]]& metadata()
        const string& peer()
        double TimeRemaining(cbool* has_deadline)
        void Unref()
        void Write(const char* data, size_t size)
        void Skip()
        void Fail(int code, const string& message)

    cdef cppclass StreamMessage:
        StreamCall* stream
        ByteBuffer data

    cdef cppclass FrontendStats:
        uint64_t infer_started, stream_messages, infer_shed, relayed_started
        uint64_t infer_waiting, infer_with_python, stream_messages_with_python

    cdef cppclass Frontend:
        Frontend(const FrontendConfig&) except +
        int port()
        int event_fd()
        void Drain(vector[InferCall*]* calls, vector[StreamMessage]* messages,
                   vector[uint64_t]* cancelled)
        void Shutdown(double grace_s)
        FrontendStats stats()


def grpcpp_version() -> str:
    """The version of the grpc++ library this front end runs on."""
    return Version().decode()


class NativeAbort(Exception):
    """Raised by ``NativeCall.abort``: the call ends with this status and message."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


cdef int _INTERNAL = 13


cdef class _CallContext:
    """What the inference handler reads of a call, as on grpc.aio's context; the
    subclasses say where it comes from (``_read_*``)."""

    cdef object _metadata

    cdef bint _read_metadata(self, vector[pair[string, string]]* out):
        return False  # no context (any more)

    cdef bint _read_peer(self, string* out):
        return False

    cdef bint _read_time_remaining(self, double* left, cbool* has_deadline):
        return False

    cdef int _read_value(self, const string& key, string* out):
        """1: the key's first value is in ``out``; 0: the caller sent none; -1: no
        single lookup here (the caller reads every pair)."""
        return -1

    def metadata_value(self, str key):
        """The first value of ``key`` (lowercase) as ``invocation_metadata`` gives it, or
        None: one lookup for what needs one header (a trace parent on a logged request,
        a sticky route's key), rather than a copy of every pair."""
        cdef string value
        cdef int found
        if self._metadata is None:
            found = self._read_value(key.encode("latin-1"), &value)
            if found == 0:
                return None
            if found == 1:
                if key.endswith("-bin"):
                    return <bytes>value
                return value.decode("utf-8", "replace")
        for item in self.invocation_metadata():
            if item[0] == key:
                return item[1]
        return None

    def invocation_metadata(self):
        """(key, value) pairs as grpc.aio gives them: str values, bytes for -bin keys."""
        cdef vector[pair[string, string]] items
        cdef size_t i
        if self._metadata is None:
            if not self._read_metadata(&items):
                return ()
            out = []
            for i in range(items.size()):
                key = items[i].first.decode("latin-1")
                if key.endswith("-bin"):
                    out.append((key, <bytes>items[i].second))
                else:
                    out.append((key, items[i].second.decode("utf-8", "replace")))
            self._metadata = tuple(out)
        return self._metadata

    def peer(self) -> str:
        cdef string peer
        if not self._read_peer(&peer):
            return ""
        return peer.decode("utf-8", "replace")

    def time_remaining(self):
        """Seconds to the caller's deadline, None without one (as grpc.aio)."""
        cdef cbool has_deadline = False
        cdef double left = 0.0
        if not self._read_time_remaining(&left, &has_deadline):
            return 0.0
        return left if has_deadline else None

    def abort(self, code, details: str):
        """As grpc.aio's ``context.abort``: raises, so the handler stops here."""
        raise NativeAbort(code.value[0], details)


cdef class NativeCall(_CallContext):
    """One ModelInfer call, held by Python until ``finish`` or ``fail`` answers it. Its
    context is grpc++'s own, read while the call is unanswered (``_ctx`` is cleared when
    it is answered: grpc++ frees it then)."""

    cdef InferCall* _call
    cdef GenericCallbackServerContext* _ctx
    cdef readonly uint64_t id
    cdef readonly bytes data  # the serialized ModelInferRequest

    cdef bint _read_metadata(self, vector[pair[string, string]]* out):
        if self._ctx == NULL:
            return False
        Metadata(self._ctx, out)
        return True

    cdef int _read_value(self, const string& key, string* out):
        if self._ctx == NULL:
            return 0  # answered: as _read_metadata, the call has no metadata any more
        return 1 if MetadataValue(self._ctx, key, out) else 0

    cdef bint _read_peer(self, string* out):
        if self._ctx == NULL:
            return False
        out[0] = Peer(self._ctx)
        return True

    cdef bint _read_time_remaining(self, double* left, cbool* has_deadline):
        if self._ctx == NULL:
            return False
        left[0] = TimeRemaining(self._ctx, has_deadline)
        return True

    def finish(self, bytes body not None):
        """Answers OK with ``body`` (a serialized ModelInferResponse)."""
        cdef InferCall* call = self._call
        cdef const char* data = PyBytes_AS_STRING(body)
        cdef size_t size = PyBytes_GET_SIZE(body)
        if call == NULL:
            return
        self._call = NULL  # grpc++ may free it as soon as it is answered
        self._ctx = NULL
        with nogil:
            call.Complete(data, size)

    def fail(self, int code, str message):
        cdef InferCall* call = self._call
        cdef string text = message.encode("utf-8", "replace")
        if call == NULL:
            return
        self._call = NULL
        self._ctx = NULL
        with nogil:
            call.Fail(code, text)

    def __dealloc__(self):
        # Never leave a call unanswered: grpc++ would wait for it forever.
        if self._call != NULL:
            self._call.Fail(_INTERNAL, b"ModelInfer: the server dropped the call")
            self._call = NULL


cdef class NativeStreamMessage(_CallContext):
    """One request message of a ModelStreamInfer stream (``id`` is the stream's),
    answered once: ``answer`` writes its response, ``skip`` sends none, ``fail`` ends
    the stream with a status."""

    cdef StreamCall* _stream  # a reference: the stream's copy of its context lives on
    cdef bint _answered
    cdef readonly uint64_t id
    cdef readonly bytes data  # the serialized ModelInferRequest

    cdef bint _read_metadata(self, vector[pair[string, string]]* out):
        out[0] = self._stream.metadata()
        return True

    cdef bint _read_peer(self, string* out):
        out[0] = self._stream.peer()
        return True

    cdef bint _read_time_remaining(self, double* left, cbool* has_deadline):
        left[0] = self._stream.TimeRemaining(has_deadline)
        return True

    def answer(self, bytes body not None):
        cdef const char* data = PyBytes_AS_STRING(body)
        cdef size_t size = PyBytes_GET_SIZE(body)
        if self._answered:
            return
        self._answered = True
        with nogil:
            self._stream.Write(data, size)

    def skip(self):
        if self._answered:
            return
        self._answered = True
        with nogil:
            self._stream.Skip()

    def fail(self, int code, str message):
        cdef string text = message.encode("utf-8", "replace")
        if self._answered:
            return
        self._answered = True
        with nogil:
            self._stream.Fail(code, text)

    def __dealloc__(self):
        if self._stream != NULL:
            if not self._answered:
                self._stream.Skip()
            self._stream.Unref()
            self._stream = NULL


cdef NativeCall _wrap(InferCall* call):
    cdef NativeCall wrapped = NativeCall.__new__(NativeCall)
    cdef size_t size = call.request_size()
    cdef bytes data = PyBytes_FromStringAndSize(NULL, size)
    call.copy_request(PyBytes_AS_STRING(data))
    wrapped._call = call
    wrapped._ctx = call.context()
    wrapped.id = call.id()
    wrapped.data = data
    return wrapped


cdef NativeStreamMessage _wrap_message(StreamMessage& message):
    cdef NativeStreamMessage wrapped = NativeStreamMessage.__new__(NativeStreamMessage)
    cdef bytes data = PyBytes_FromStringAndSize(NULL, message.data.Length())
    CopyBytes(message.data, PyBytes_AS_STRING(data))
    wrapped._stream = message.stream  # takes over the reference the front end took
    wrapped.id = message.stream.id()
    wrapped.data = data
    return wrapped


cdef class NativeFrontend:
    """grpc++ on ``address``; ModelInfer to Python, every other method relayed to the
    grpc.aio server at ``backend``."""

    cdef Frontend* _frontend
    cdef vector[InferCall*] _calls
    cdef vector[StreamMessage] _messages
    cdef vector[uint64_t] _cancelled

    def __cinit__(
        self, str address, str backend, str infer_method, str stream_method, *,
        int max_receive_bytes,
        int max_send_bytes, int max_waiting, bytes cert_chain=None, bytes private_key=None,
        bytes client_ca=None,
    ):
        cdef FrontendConfig config
        config.address = address.encode()
        config.backend = backend.encode()
        config.infer_method = infer_method.encode()
        config.stream_method = stream_method.encode()
        config.max_receive_bytes = max_receive_bytes
        config.max_send_bytes = max_send_bytes
        config.max_waiting = max_waiting
        config.tls = cert_chain is not None
        if cert_chain is not None:
            config.cert_chain_pem = cert_chain
            config.private_key_pem = private_key
            if client_ca is not None:
                config.client_ca_pem = client_ca
                config.require_client_cert = True
        with nogil:
            self._frontend = new Frontend(config)

    @property
    def port(self) -> int:
        return self._frontend.port()

    def fileno(self) -> int:
        return self._frontend.event_fd()

    def drain(self):
        """(new ModelInfer calls as NativeCall, new stream messages as
        NativeStreamMessage, ids of calls and streams whose callers cancelled them)."""
        cdef size_t i
        self._frontend.Drain(&self._calls, &self._messages, &self._cancelled)
        calls = [_wrap(self._calls[i]) for i in range(self._calls.size())]
        messages = [_wrap_message(self._messages[i]) for i in range(self._messages.size())]
        cancelled = [self._cancelled[i] for i in range(self._cancelled.size())]
        self._calls.clear()
        self._messages.clear()
        self._cancelled.clear()
        return calls, messages, cancelled

    def shutdown(self, double grace_s):
        """Blocks until grpc++ is done with every call: run it off the event loop, which
        must keep answering the calls it holds."""
        with nogil:
            self._frontend.Shutdown(grace_s)

    def stats(self) -> dict:
        cdef FrontendStats s = self._frontend.stats()
        return {
            "infer_started": s.infer_started,
            "stream_messages": s.stream_messages,
            "infer_shed": s.infer_shed,
            "relayed_started": s.relayed_started,
            "infer_waiting": s.infer_waiting,
            "infer_with_python": s.infer_with_python,
            "stream_messages_with_python": s.stream_messages_with_python,
        }

    def __dealloc__(self):
        # Deleting it shuts grpc++ down and waits for every call; one that Python still
        # holds would never end, so a frontend never shut down is left to the process.
        if self._frontend != NULL and self._frontend.stats().infer_with_python == 0:
            with nogil:
                del self._frontend
        self._frontend = NULL
