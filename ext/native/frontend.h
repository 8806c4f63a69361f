// The native gRPC front end: grpc++'s callback server on the public port.
//
// Why it exists: grpc.aio spends ~250 µs of CPU on every call in its own Python-level
// machinery (coroutines, RPC state, one event-loop turn per accepted call) before a
// servicer runs; on this project's 2-core target that, not the model, caps throughput.
// Here grpc++ does the transport in C++ threads and hands ModelInfer calls to Python in
// batches: one eventfd wake-up drains every call that arrived meanwhile.
//
// ModelInfer is served here. Every other method (control RPCs, ModelStreamInfer, health,
// reflection) is relayed byte for byte to the grpc.aio server, which then listens only
// on a private Unix socket; those calls keep every behaviour they have there.
//
// Threads: grpc++ runs every reaction below on its own threads. They never touch Python
// objects: ModelInfer calls wait in `inbox_` (a mutex-guarded vector) until the event
// loop drains it. Python answers a call from the loop thread through InferCall::Complete
// or InferCall::Fail; under load the responder thread hands the answers to grpc++
// (Frontend::Respond), which allows operations to be started from any thread.
#pragma once

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace tensorgate {

class Frontend;

struct FrontendConfig {
  std::string address;        // host:port to listen on (port 0: any free port)
  std::string backend;        // grpc target of the grpc.aio server ("unix:/path")
  std::string infer_method;   // "/inference.GRPCInferenceService/ModelInfer"
  std::string stream_method;  // "/inference.GRPCInferenceService/ModelStreamInfer"
  int max_receive_bytes = 4 * 1024 * 1024;
  int max_send_bytes = -1;
  // ModelInfer calls that may wait for the event loop; past it they are answered
  // RESOURCE_EXHAUSTED here, in microseconds, without costing Python anything.
  int max_waiting = 3000;
  bool tls = false;
  std::string cert_chain_pem, private_key_pem, client_ca_pem;
  bool require_client_cert = false;
};

// A message's bytes, however grpc++ sliced them, into one contiguous buffer of
// buffer.Length() bytes at `dst`: the one copy of a request on its way to Python.
void CopyBytes(const grpc::ByteBuffer& buffer, char* dst);

// What Python reads of a call's context (its metadata, peer and deadline).
std::string Peer(grpc::GenericCallbackServerContext* ctx);
void Metadata(grpc::GenericCallbackServerContext* ctx,
              std::vector<std::pair<std::string, std::string>>* out);
// The first value of one metadata key (lowercase) into `out`; false when the caller
// sent none. One lookup, where Metadata copies every pair.
bool MetadataValue(grpc::GenericCallbackServerContext* ctx, const std::string& key,
                   std::string* out);
// Seconds left until the caller's deadline (negative once it passed); `has_deadline` is
// false when the caller set none.
double TimeRemaining(grpc::GenericCallbackServerContext* ctx, bool* has_deadline);
double SecondsUntil(std::chrono::system_clock::time_point deadline, bool* has_deadline);

// One ModelInfer call, from its arrival to the Python side's answer.
class InferCall final : public grpc::ServerGenericBidiReactor {
 public:
  InferCall(Frontend* frontend, grpc::GenericCallbackServerContext* ctx, uint64_t id);

  uint64_t id() const { return id_; }
  size_t request_size() const { return request_.Length(); }
  void copy_request(char* dst) const;  // request_size() bytes
  grpc::GenericCallbackServerContext* context() const { return ctx_; }

  // The answer, from the event loop; each call is answered once (later ones are ignored).
  void Complete(const char* data, size_t size);
  void Fail(int code, const std::string& message);

  void OnReadDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  friend class Frontend;
  enum State : int { kReading, kWithPython, kAnswered };
  bool Answer();  // claims the right to answer; false when already answered
  void Send();    // hands the prepared answer to grpc++ (see Frontend::Respond)

  Frontend* const frontend_;
  grpc::GenericCallbackServerContext* const ctx_;
  const uint64_t id_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  grpc::Status status_;  // the answer's status (OK with response_, or the failure)
  std::atomic<int> state_{kReading};
};

// One ModelStreamInfer stream. Each request message goes to Python on its own (the
// inbox's StreamMessage) and is answered once, with a response message or none (Skip);
// responses go out in the order they are answered, one write in flight at a time. The
// stream ends OK once the caller half-closed and every message was answered; with the
// status Python gives Fail (a stream whose credentials were refused) at once; and at
// once, too, when the caller cancels it or the server's shutdown grace ran out.
// What Python reads of the stream's context (metadata, peer, deadline) is copied once
// at the start, so no end of the stream waits on the messages Python still holds.
// Python holds a reference per message it has (Ref/Unref): the object outlives grpc++'s
// OnDone until the last one is let go; answers after the end are ignored.
// A write Python's answer starts goes the way of a ModelInfer answer (Frontend::Respond):
// inline when the loop holds nothing else, else the responder thread starts it (Flush).
class StreamCall final : public grpc::ServerGenericBidiReactor {
 public:
  StreamCall(Frontend* frontend, grpc::GenericCallbackServerContext* ctx, uint64_t id);

  uint64_t id() const { return id_; }
  // The context as it was at the start (valid for as long as Python holds a reference).
  const std::vector<std::pair<std::string, std::string>>& metadata() const {
    return metadata_;
  }
  const std::string& peer() const { return peer_; }
  double TimeRemaining(bool* has_deadline) const;
  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  // Python's answer to one of its messages: a response, none, or the stream's end.
  void Write(const char* data, size_t size);
  void Skip();
  void Fail(int code, const std::string& message);
  void Flush();  // the responder thread: starts the write Write left to it

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override { Unref(); }

 private:
  friend class Frontend;
  void Queue(grpc::Slice response, bool inline_ok);  // one message answered with it
  void Pump();  // with mu_ held: the next write, or the end once all is answered
  void EndWith(const grpc::Status& status);  // with mu_ held: no more writes

  Frontend* const frontend_;
  const uint64_t id_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  const std::string peer_;
  const std::chrono::system_clock::time_point deadline_;
  std::mutex mu_;
  grpc::ByteBuffer read_;
  grpc::ByteBuffer in_flight_;          // the response being written
  std::deque<grpc::ByteBuffer> queued_;  // responses waiting for it
  int unanswered_ = 0;                  // messages handed to Python, not answered yet
  bool writing_ = false, reads_done_ = false, fail_wanted_ = false, finished_ = false;
  bool flush_pending_ = false;  // the responder will start the next write
  grpc::Status status_;
  std::atomic<int> refs_{1};  // grpc++'s, until OnDone, and one per message Python holds
};

// A stream's request message on its way to Python (the stream is Ref'd for it).
struct StreamMessage {
  StreamCall* stream;
  grpc::ByteBuffer data;
};

struct FrontendStats {
  uint64_t infer_started = 0;     // ModelInfer calls read in full
  uint64_t stream_messages = 0;   // ModelStreamInfer request messages read
  uint64_t infer_shed = 0;        // answered RESOURCE_EXHAUSTED: too many waiting
  uint64_t relayed_started = 0;   // other methods relayed to the grpc.aio server
  uint64_t infer_waiting = 0;     // now: read, not yet drained by the event loop
  uint64_t infer_with_python = 0; // now: drained, not yet answered
  uint64_t stream_messages_with_python = 0;  // the same for stream messages
};

class Frontend final : public grpc::CallbackGenericService {
 public:
  explicit Frontend(const FrontendConfig& config);  // throws std::runtime_error
  ~Frontend() override;

  int port() const { return port_; }
  int event_fd() const { return event_fd_; }

  // Moves every call and stream message that arrived since the last drain into `calls`
  // and `messages`, and the ids of calls and streams whose callers cancelled them while
  // Python held them (or a message of them) into `cancelled`.
  void Drain(std::vector<InferCall*>* calls, std::vector<StreamMessage>* messages,
             std::vector<uint64_t>* cancelled);
  // Stops accepting calls; after `grace_s` seconds cancels those still running. Blocks
  // until grpc++ is done with every call: the event loop must keep answering meanwhile.
  void Shutdown(double grace_s);
  FrontendStats stats() const;

  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* ctx) override;

 private:
  friend class InferCall;
  friend class StreamCall;
  friend class RelayCall;
  void Submit(InferCall* call);      // a call read in full: to the inbox, or shed
  void Submit(StreamCall* stream, grpc::ByteBuffer message);  // the same for a message
  void Cancelled(uint64_t id);       // a call's caller went away while with Python
  void Wake();                       // with mu_ held
  // Sends an answer prepared on the event loop: inline when the loop holds only this
  // call (lowest latency), else through the responder thread, so that grpc++'s write
  // path (framing, the socket write) runs beside the loop instead of on it.
  void Respond(InferCall* call);
  // Python let go of a call or message (`held` counts its kind): true when the loop
  // now holds nothing else, so that the answer may be sent inline.
  bool LetGo(std::atomic<int64_t>& held);
  // A stream message Python answered (whatever the answer): LetGo for messages.
  bool MessageAnswered();
  void Defer(StreamCall* stream);  // Flush on the responder thread (Ref'd for it)
  // The responder's work: an answered call to send, or a stream to Flush.
  struct Outgoing {
    InferCall* call;
    StreamCall* stream;
  };
  void Hand(Outgoing work);        // to the responder thread
  void RunResponder();

  const FrontendConfig config_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> backend_channel_;
  std::unique_ptr<grpc::GenericStub> backend_;
  int port_ = 0;
  int event_fd_ = -1;

  mutable std::mutex mu_;
  std::vector<InferCall*> inbox_;
  std::vector<StreamMessage> messages_;
  std::vector<uint64_t> cancelled_;
  bool woken_ = false;
  std::atomic<uint64_t> next_id_{1};
  std::atomic<uint64_t> infer_started_{0}, infer_shed_{0}, relayed_started_{0};
  std::atomic<uint64_t> stream_messages_{0};
  std::atomic<int64_t> with_python_{0};           // ModelInfer calls Python holds
  std::atomic<int64_t> messages_with_python_{0};  // stream messages Python holds
  std::atomic<bool> shut_down_{false};

  std::mutex out_mu_;
  std::condition_variable out_cv_;
  std::vector<Outgoing> outbox_;
  bool responder_stop_ = false;
  std::thread responder_;
};

}  // namespace tensorgate
