// See frontend.h for what this is and why.
#include "frontend.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <stdexcept>

namespace tensorgate {

namespace {

const char kPeerHeader[] = "x-tensorgate-peer";

// Headers the relay must not copy onto its own call: HTTP/2 pseudo-headers and those
// grpc++ writes itself. Everything else (auth, traceparent, route keys, -bin) goes on.
bool Relayable(grpc::string_ref key) {
  if (key.empty() || key.data()[0] == ':') return false;
  static const char* const kSkip[] = {"te", "content-type", "user-agent", "host",
                                      "grpc-accept-encoding", "grpc-encoding",
                                      "grpc-timeout", "accept-encoding", kPeerHeader};
  for (const char* skip : kSkip) {
    if (key == grpc::string_ref(skip)) return false;
  }
  return key.length() < 5 || std::memcmp(key.data(), "grpc-", 5) != 0;
}

}  // namespace

// -- ModelInfer ---------------------------------------------------------------------

InferCall::InferCall(Frontend* frontend, grpc::GenericCallbackServerContext* ctx,
                     uint64_t id)
    : frontend_(frontend), ctx_(ctx), id_(id) {
  StartRead(&request_);
}

void CopyBytes(const grpc::ByteBuffer& buffer, char* dst) {
  std::vector<grpc::Slice> slices;
  // Dump references the slices (no copy); the one copy is into the caller's buffer.
  if (!buffer.Dump(&slices).ok()) return;
  for (const grpc::Slice& s : slices) {
    std::memcpy(dst, s.begin(), s.size());
    dst += s.size();
  }
}

void InferCall::copy_request(char* dst) const { CopyBytes(request_, dst); }

std::string Peer(grpc::GenericCallbackServerContext* ctx) { return ctx->peer(); }

void Metadata(grpc::GenericCallbackServerContext* ctx,
              std::vector<std::pair<std::string, std::string>>* out) {
  for (const auto& kv : ctx->client_metadata()) {
    out->emplace_back(std::string(kv.first.data(), kv.first.size()),
                      std::string(kv.second.data(), kv.second.size()));
  }
}

bool MetadataValue(grpc::GenericCallbackServerContext* ctx, const std::string& key,
                   std::string* out) {
  const auto& metadata = ctx->client_metadata();
  auto it = metadata.find(grpc::string_ref(key));
  if (it == metadata.end()) return false;
  out->assign(it->second.data(), it->second.size());
  return true;
}

double TimeRemaining(grpc::GenericCallbackServerContext* ctx, bool* has_deadline) {
  return SecondsUntil(ctx->deadline(), has_deadline);
}

double SecondsUntil(std::chrono::system_clock::time_point deadline, bool* has_deadline) {
  if (deadline == std::chrono::system_clock::time_point::max()) {
    *has_deadline = false;
    return 0.0;
  }
  *has_deadline = true;
  return std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count();
}

void InferCall::OnReadDone(bool ok) {
  if (!ok) {
    // The caller half-closed without a message, or went away.
    state_.store(kAnswered);
    Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "ModelInfer: the call carried no ModelInferRequest"));
    return;
  }
  frontend_->Submit(this);
}

bool InferCall::Answer() {
  int expected = kWithPython;
  return state_.compare_exchange_strong(expected, kAnswered);
}

void InferCall::Complete(const char* data, size_t size) {
  if (!Answer()) return;
  grpc::Slice slice(data, size);  // the one copy of the response bytes
  response_ = grpc::ByteBuffer(&slice, 1);
  status_ = grpc::Status::OK;
  frontend_->Respond(this);
}

void InferCall::Fail(int code, const std::string& message) {
  if (!Answer()) return;
  status_ = grpc::Status(static_cast<grpc::StatusCode>(code), message);
  frontend_->Respond(this);
}

void InferCall::Send() {
  if (status_.ok()) {
    StartWriteAndFinish(&response_, grpc::WriteOptions(), status_);
  } else {
    Finish(status_);
  }
}

void InferCall::OnCancel() {
  // Only a call Python holds needs telling; one still being read finishes by itself.
  if (state_.load() == kWithPython) frontend_->Cancelled(id_);
}

void InferCall::OnDone() { delete this; }

// -- ModelStreamInfer ----------------------------------------------------------------
//
// mu_ is held while starting operations, as in RelayCall below: grpc++ never runs the
// reactions they trigger inside the call that starts them.

StreamCall::StreamCall(Frontend* frontend, grpc::GenericCallbackServerContext* ctx,
                       uint64_t id)
    : frontend_(frontend), id_(id), peer_(ctx->peer()), deadline_(ctx->deadline()) {
  Metadata(ctx, &metadata_);
  StartRead(&read_);
}

double StreamCall::TimeRemaining(bool* has_deadline) const {
  return SecondsUntil(deadline_, has_deadline);
}

void StreamCall::OnReadDone(bool ok) {
  grpc::ByteBuffer message;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok || finished_ || fail_wanted_) {  // half-closed, gone, or ended by Python
      reads_done_ = true;
      Pump();
      return;
    }
    message.Swap(&read_);
    ++unanswered_;
    StartRead(&read_);
  }
  frontend_->Submit(this, std::move(message));
}

void StreamCall::Write(const char* data, size_t size) {
  grpc::Slice slice(data, size);  // the one copy of the response bytes
  Queue(std::move(slice), frontend_->MessageAnswered());
}

void StreamCall::Queue(grpc::Slice response, bool inline_ok) {
  bool defer = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    --unanswered_;
    if (fail_wanted_) return;  // the end is on its way: nothing more goes out
    queued_.emplace_back(&response, 1);
    if (writing_ || flush_pending_) return;  // OnWriteDone or the Flush takes it
    if (inline_ok) {
      Pump();
    } else {
      flush_pending_ = true;
      Ref();  // the responder's, until Flush ran
      defer = true;
    }
  }
  if (defer) frontend_->Defer(this);
}

void StreamCall::Flush() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    flush_pending_ = false;
    Pump();
  }
  Unref();  // may delete this: after mu_ is let go
}

void StreamCall::Skip() {
  frontend_->MessageAnswered();
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  --unanswered_;
  Pump();
}

void StreamCall::Fail(int code, const std::string& message) {
  frontend_->MessageAnswered();
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  --unanswered_;  // this message's answer is the stream's end
  EndWith(grpc::Status(static_cast<grpc::StatusCode>(code), message));
  Pump();
}

void StreamCall::OnWriteDone(bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  writing_ = false;
  if (!ok) {  // the caller is gone: nothing more can reach it
    EndWith(grpc::Status(grpc::StatusCode::CANCELLED, "ModelStreamInfer: the caller left"));
  }
  Pump();
}

void StreamCall::EndWith(const grpc::Status& status) {
  if (fail_wanted_) return;
  fail_wanted_ = true;
  status_ = status;
  queued_.clear();
}

void StreamCall::OnCancel() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    EndWith(grpc::Status(grpc::StatusCode::CANCELLED, "ModelStreamInfer: cancelled"));
    Pump();
  }
  frontend_->Cancelled(id_);  // Python cancels the messages it still runs
}

void StreamCall::Pump() {
  if (finished_ || writing_ || flush_pending_) return;
  if (fail_wanted_) {  // messages Python still holds are answered into the void
    finished_ = true;
    Finish(status_);
    return;
  }
  if (!queued_.empty()) {
    in_flight_ = std::move(queued_.front());
    queued_.pop_front();
    writing_ = true;
    StartWrite(&in_flight_);
    return;
  }
  if (reads_done_ && unanswered_ == 0) {
    finished_ = true;
    Finish(grpc::Status::OK);
  }
}

// -- everything else: relayed to the grpc.aio server ----------------------------------
//
// A byte pump in each direction (caller -> backend "up", backend -> caller "down"),
// each with one message in flight. The backend call carries two holds (AddHold), one
// per pump, so it cannot end while a pump may still start an operation on it; once both
// pumps stopped and its status is in, the caller's call is finished with the backend's
// status and trailing metadata. Unary and streaming methods look alike on the wire, so
// one relay serves them all.
//
// Every method below is a grpc++ reaction. mu_ is held while starting operations: grpc++
// runs the reactions those operations trigger after the current reaction returns, never
// inside it, so that cannot deadlock. Holds are released after mu_ is let go, last.
class RelayCall final : public grpc::ServerGenericBidiReactor {
 public:
  RelayCall(grpc::GenericCallbackServerContext* ctx, grpc::GenericStub* backend)
      : ctx_(ctx), client_(this) {
    for (const auto& kv : ctx->client_metadata()) {
      if (Relayable(kv.first)) {
        backend_ctx_.AddMetadata(std::string(kv.first.data(), kv.first.size()),
                                 std::string(kv.second.data(), kv.second.size()));
      }
    }
    backend_ctx_.AddMetadata(kPeerHeader, ctx->peer());
    if (ctx->deadline() != std::chrono::system_clock::time_point::max()) {
      backend_ctx_.set_deadline(ctx->deadline());
    }
    // The backend is this process's own grpc.aio server: a call that finds its socket
    // not (yet) accepting waits for it, within the caller's deadline, instead of failing
    // fast and leaving the channel in backoff.
    backend_ctx_.set_wait_for_ready(true);
    backend->PrepareBidiStreamingCall(&backend_ctx_, ctx->method(), grpc::StubOptions(),
                                      &client_);
    client_.StartRead(&down_);
    client_.AddMultipleHolds(2);  // the up pump's and the down pump's
    client_.StartCall();
    StartRead(&up_);
  }

  // -- the caller's side
  void OnReadDone(bool ok) override {  // a message (or the end) came up from the caller
    bool release = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (up_ended_) return;  // the backend is done: nothing more goes up
      if (ok) {
        up_writing_ = true;
        client_.StartWrite(&up_);
      } else {
        client_.StartWritesDone();
        release = EndUp();
      }
    }
    if (release) client_.RemoveHold();
  }
  void OnWriteDone(bool ok) override {  // a message went down to the caller
    int releases = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (ok) {
        client_.StartRead(&down_);
      } else {  // the caller is gone
        backend_ctx_.TryCancel();
        releases = EndDown();
      }
    }
    Release(releases);
  }
  void OnCancel() override { backend_ctx_.TryCancel(); }
  void OnDone() override { Unref(); }

  // -- the backend's side
  void BackendWriteDone(bool ok) {
    bool release = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      up_writing_ = false;
      if (ok && !down_ended_) {
        StartRead(&up_);
      } else {
        release = EndUp();
      }
    }
    if (release) client_.RemoveHold();
  }
  void BackendReadDone(bool ok) {
    int releases = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (ok) {
        StartWrite(&down_);
      } else {
        releases = EndDown();
      }
    }
    Release(releases);
  }
  void BackendDone(const grpc::Status& status) {  // both pumps have stopped
    for (const auto& kv : backend_ctx_.GetServerTrailingMetadata()) {
      if (Relayable(kv.first)) {
        ctx_->AddTrailingMetadata(std::string(kv.first.data(), kv.first.size()),
                                  std::string(kv.second.data(), kv.second.size()));
      }
    }
    Finish(status);  // a read still waiting on the caller completes, not ok
    Unref();
  }

 private:
  class Client final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    explicit Client(RelayCall* relay) : relay_(relay) {}
    void OnWriteDone(bool ok) override { relay_->BackendWriteDone(ok); }
    void OnReadDone(bool ok) override { relay_->BackendReadDone(ok); }
    void OnDone(const grpc::Status& status) override { relay_->BackendDone(status); }

   private:
    RelayCall* const relay_;
  };

  // With mu_ held: the up pump stops; true when its hold is to be released.
  bool EndUp() {
    if (up_ended_) return false;
    up_ended_ = true;
    return true;
  }
  // With mu_ held: the down pump stops. An up pump waiting on the caller stops with it
  // (a caller may keep a stream open after the backend ended it). Holds to release.
  int EndDown() {
    if (down_ended_) return 0;
    down_ended_ = true;
    return 1 + (!up_writing_ && EndUp() ? 1 : 0);
  }
  void Release(int holds) {
    for (int i = 0; i < holds; ++i) client_.RemoveHold();
  }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  grpc::GenericCallbackServerContext* const ctx_;
  grpc::ClientContext backend_ctx_;
  Client client_;
  grpc::ByteBuffer up_, down_;
  std::mutex mu_;
  bool up_writing_ = false, up_ended_ = false, down_ended_ = false;
  std::atomic<int> refs_{2};  // the caller's call and the backend call
};

// -- the server -------------------------------------------------------------------------

Frontend::Frontend(const FrontendConfig& config) : config_(config) {
  event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (event_fd_ < 0) throw std::runtime_error("eventfd failed");

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);  // the front end enforces the limits
  args.SetMaxSendMessageSize(-1);
  backend_channel_ =
      grpc::CreateCustomChannel(config.backend, grpc::InsecureChannelCredentials(), args);
  backend_ = std::make_unique<grpc::GenericStub>(backend_channel_);

  std::shared_ptr<grpc::ServerCredentials> creds;
  if (config.tls) {
    grpc::SslServerCredentialsOptions options(
        config.client_ca_pem.empty()
            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
            : (config.require_client_cert
                   ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                   : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY));
    options.pem_root_certs = config.client_ca_pem;
    options.pem_key_cert_pairs.push_back({config.private_key_pem, config.cert_chain_pem});
    creds = grpc::SslServerCredentials(options);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.address, creds, &port_);
  builder.SetMaxReceiveMessageSize(config.max_receive_bytes);
  builder.SetMaxSendMessageSize(config.max_send_bytes);
  // grpc++ turns SO_REUSEPORT on by default: a second server would then share the port
  // silently instead of failing to start (grpc.aio is configured the same way).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterCallbackGenericService(this);
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) {
    close(event_fd_);
    throw std::runtime_error("could not listen on " + config.address);
  }
  responder_ = std::thread([this] { RunResponder(); });
}

Frontend::~Frontend() {
  if (server_ && !shut_down_.load()) Shutdown(0.0);
  {
    std::lock_guard<std::mutex> lock(out_mu_);
    responder_stop_ = true;
  }
  out_cv_.notify_one();
  if (responder_.joinable()) responder_.join();
  if (event_fd_ >= 0) close(event_fd_);
}

bool Frontend::LetGo(std::atomic<int64_t>& held) {
  held.fetch_sub(1, std::memory_order_relaxed);
  // Only chooses inline or the responder: either is correct, so a racing count is fine.
  return with_python_.load(std::memory_order_relaxed) +
             messages_with_python_.load(std::memory_order_relaxed) <=
         0;
}

void Frontend::Respond(InferCall* call) {
  if (LetGo(with_python_)) {
    call->Send();
    return;
  }
  Hand(Outgoing{call, nullptr});
}

bool Frontend::MessageAnswered() { return LetGo(messages_with_python_); }

void Frontend::Defer(StreamCall* stream) { Hand(Outgoing{nullptr, stream}); }

void Frontend::Hand(Outgoing work) {
  bool first;
  {
    std::lock_guard<std::mutex> lock(out_mu_);
    first = outbox_.empty();
    outbox_.push_back(work);
  }
  if (first) out_cv_.notify_one();
}

void Frontend::RunResponder() {
  std::vector<Outgoing> batch;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(out_mu_);
      out_cv_.wait(lock, [this] { return responder_stop_ || !outbox_.empty(); });
      if (outbox_.empty()) return;  // stopping, and nothing left to send
      batch.swap(outbox_);
    }
    for (const Outgoing& work : batch) {
      if (work.call != nullptr) {
        work.call->Send();
      } else {
        work.stream->Flush();
      }
    }
    batch.clear();
  }
}

grpc::ServerGenericBidiReactor* Frontend::CreateReactor(
    grpc::GenericCallbackServerContext* ctx) {
  if (ctx->method() == config_.infer_method) {
    return new InferCall(this, ctx, next_id_.fetch_add(1, std::memory_order_relaxed));
  }
  if (ctx->method() == config_.stream_method) {
    return new StreamCall(this, ctx, next_id_.fetch_add(1, std::memory_order_relaxed));
  }
  relayed_started_.fetch_add(1, std::memory_order_relaxed);
  return new RelayCall(ctx, backend_.get());
}

void Frontend::Wake() {
  if (woken_) return;
  woken_ = true;
  uint64_t one = 1;
  ssize_t n = write(event_fd_, &one, sizeof one);
  (void)n;  // EAGAIN only if the counter is saturated: the loop is awake anyway
}

void Frontend::Submit(InferCall* call) {
  infer_started_.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (inbox_.size() < static_cast<size_t>(config_.max_waiting)) {
      call->state_.store(InferCall::kWithPython);
      with_python_.fetch_add(1, std::memory_order_relaxed);
      inbox_.push_back(call);
      Wake();
      return;
    }
  }
  infer_shed_.fetch_add(1, std::memory_order_relaxed);
  call->state_.store(InferCall::kAnswered);
  call->Finish(grpc::Status(
      grpc::StatusCode::RESOURCE_EXHAUSTED,
      "server overloaded: " + std::to_string(config_.max_waiting) +
          " ModelInfer calls already wait for the server's event loop; retry with backoff"));
}

void Frontend::Submit(StreamCall* stream, grpc::ByteBuffer message) {
  stream_messages_.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (inbox_.size() + messages_.size() < static_cast<size_t>(config_.max_waiting)) {
      stream->Ref();  // Python's, until it lets the message go
      messages_with_python_.fetch_add(1, std::memory_order_relaxed);
      messages_.push_back(StreamMessage{stream, std::move(message)});
      Wake();
      return;
    }
  }
  // Shed as a ModelInfer call would be, but as this message's error_message: a stream
  // goes on after a bad message. ModelStreamInferResponse field 1, a string.
  infer_shed_.fetch_add(1, std::memory_order_relaxed);
  const std::string text =
      "server overloaded: " + std::to_string(config_.max_waiting) +
      " requests already wait for the server's event loop; retry with backoff";
  std::string wire(1, '\x0a');
  for (size_t n = text.size(); ; n >>= 7) {  // varint length
    if (n < 0x80) { wire.push_back(static_cast<char>(n)); break; }
    wire.push_back(static_cast<char>((n & 0x7f) | 0x80));
  }
  wire += text;
  stream->Queue(grpc::Slice(wire), /*inline_ok=*/true);  // on grpc++'s thread
}

void Frontend::Cancelled(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_.push_back(id);
  Wake();
}

void Frontend::Drain(std::vector<InferCall*>* calls, std::vector<StreamMessage>* messages,
                     std::vector<uint64_t>* cancelled) {
  uint64_t counter;
  ssize_t n = read(event_fd_, &counter, sizeof counter);
  (void)n;
  std::lock_guard<std::mutex> lock(mu_);
  woken_ = false;
  calls->swap(inbox_);
  messages->swap(messages_);
  cancelled->swap(cancelled_);
}

void Frontend::Shutdown(double grace_s) {
  if (shut_down_.exchange(true)) return;
  const auto deadline =
      std::chrono::system_clock::now() +
      std::chrono::microseconds(static_cast<int64_t>(grace_s * 1e6));
  server_->Shutdown(deadline);
  server_->Wait();
}

FrontendStats Frontend::stats() const {
  FrontendStats s;
  s.infer_started = infer_started_.load();
  s.stream_messages = stream_messages_.load();
  s.infer_shed = infer_shed_.load();
  s.relayed_started = relayed_started_.load();
  s.infer_with_python = static_cast<uint64_t>(with_python_.load());
  s.stream_messages_with_python = static_cast<uint64_t>(messages_with_python_.load());
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.infer_waiting = inbox_.size() + messages_.size();
  }
  return s;
}

}  // namespace tensorgate
