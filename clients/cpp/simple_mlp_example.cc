// Calls ModelInfer on the demo model simple_mlp with a fixed 2x16 FP32 input, a route
// key and a deadline, checks the answer's form and prints OUTPUT0 as JSON on stdout.
//
//   simple_mlp_example HOST:PORT [ROUTE_KEY] [TIMEOUT_MS]
//
// Exit status: 0 ok, 1 the RPC failed (status on stderr), 2 an answer of the wrong form.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "inference/grpc_service.grpc.pb.h"

namespace {

constexpr int kRows = 2, kCols = 16, kOutCols = 8;

// v2 raw contents are little-endian whatever the host is: go through the bit pattern.
void AppendFloatLE(std::string* out, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
}

float ReadFloatLE(const std::string& raw, size_t offset) {
  uint32_t bits = 0;
  for (int i = 0; i < 4; ++i) bits |= uint32_t(uint8_t(raw[offset + i])) << (8 * i);
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

int Fail(const char* what) {
  std::fprintf(stderr, "wrong answer: %s\n", what);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s HOST:PORT [ROUTE_KEY] [TIMEOUT_MS]\n", argv[0]);
    return 64;
  }
  const std::string route_key = argc > 2 ? argv[2] : "";
  const long timeout_ms = argc > 3 ? std::atol(argv[3]) : 5000;

  auto channel = grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials());
  auto stub = inference::GRPCInferenceService::NewStub(channel);

  inference::ModelInferRequest request;
  request.set_model_name("simple_mlp");
  auto* input = request.add_inputs();
  input->set_name("INPUT0");
  input->set_datatype("FP32");
  input->add_shape(kRows);
  input->add_shape(kCols);
  std::string* raw = request.add_raw_input_contents();
  // The same input as tests/clients: x[r][c] = (c - 8) * (r + 1) / 8, exact in FP32.
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCols; ++c) AppendFloatLE(raw, (c - 8) * (r + 1) / 8.0f);

  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  if (!route_key.empty()) {
    // Both places TensorGate's routing reads a route key from (ignored until it exists).
    context.AddMetadata("x-tensorgate-route-key", route_key);
    (*request.mutable_parameters())["route_key"].set_string_param(route_key);
  }

  inference::ModelInferResponse response;
  grpc::Status status = stub->ModelInfer(&context, request, &response);
  if (!status.ok()) {
    std::fprintf(stderr, "ModelInfer failed: code %d: %s\n", int(status.error_code()),
                 status.error_message().c_str());
    return 1;
  }

  if (response.outputs_size() != 1 || response.raw_output_contents_size() != 1)
    return Fail("expected one output in raw_output_contents");
  const auto& output = response.outputs(0);
  if (output.name() != "OUTPUT0" || output.datatype() != "FP32") return Fail("not OUTPUT0 FP32");
  if (output.shape_size() != 2 || output.shape(0) != kRows || output.shape(1) != kOutCols)
    return Fail("shape is not [2, 8]");
  const std::string& out = response.raw_output_contents(0);
  if (out.size() != sizeof(float) * kRows * kOutCols) return Fail("byte size is not 64");

  // %.9g prints every FP32 value exactly enough to parse back to the same float.
  std::printf("{\"model_name\": \"%s\", \"OUTPUT0\": {\"shape\": [%d, %d], \"data\": [",
              response.model_name().c_str(), kRows, kOutCols);
  for (int i = 0; i < kRows * kOutCols; ++i)
    std::printf("%s%.9g", i ? ", " : "", ReadFloatLE(out, 4 * i));
  std::printf("]}}\n");
  return 0;
}
