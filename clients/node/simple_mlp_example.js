#!/usr/bin/env node
// Calls ModelInfer on the demo model simple_mlp with a fixed 2x16 FP32 input, a route
// key and a deadline, checks the answer's form and prints OUTPUT0 as JSON on stdout.
//
//   node simple_mlp_example.js HOST:PORT [ROUTE_KEY] [TIMEOUT_MS]
//
// Exit status: 0 ok, 1 the RPC failed (status on stderr), 2 an answer of the wrong form.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// proto/ is read at run time: no generated code to keep in step with it.
const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const ROWS = 2, COLS = 16, OUT_COLS = 8;

function loadService() {
  const definition = protoLoader.loadSync('inference/grpc_service.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the .proto: raw_input_contents, model_name
    longs: Number, // shapes are int64; ours fit a double exactly
    defaults: true,
  });
  return grpc.loadPackageDefinition(definition).inference.GRPCInferenceService;
}

function fail(what) {
  process.stderr.write(`wrong answer: ${what}\n`);
  process.exit(2);
}

function main() {
  const [address, routeKey = '', timeoutArg = '5000'] = process.argv.slice(2);
  if (!address) {
    process.stderr.write('usage: simple_mlp_example.js HOST:PORT [ROUTE_KEY] [TIMEOUT_MS]\n');
    process.exit(64);
  }
  const Service = loadService();
  const client = new Service(address, grpc.credentials.createInsecure());

  // The same input as tests/clients: x[r][c] = (c - 8) * (r + 1) / 8, exact in FP32.
  // v2 raw contents are little-endian, whatever the host is.
  const raw = Buffer.alloc(4 * ROWS * COLS);
  for (let r = 0; r < ROWS; r++) {
    for (let c = 0; c < COLS; c++) raw.writeFloatLE(((c - 8) * (r + 1)) / 8, 4 * (r * COLS + c));
  }
  const request = {
    model_name: 'simple_mlp',
    inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [ROWS, COLS] }],
    raw_input_contents: [raw],
    parameters: {},
  };
  const metadata = new grpc.Metadata();
  if (routeKey) {
    // Both places TensorGate's routing reads a route key from (ignored until it exists).
    metadata.set('x-tensorgate-route-key', routeKey);
    request.parameters.route_key = { string_param: routeKey };
  }
  // The deadline travels to the server as grpc-timeout.
  const deadline = new Date(Date.now() + Number(timeoutArg));

  client.ModelInfer(request, metadata, { deadline }, (err, response) => {
    client.close();
    if (err) {
      process.stderr.write(`ModelInfer failed: ${grpc.status[err.code]}: ${err.details}\n`);
      process.exit(1);
    }
    if (response.outputs.length !== 1 || response.raw_output_contents.length !== 1) {
      fail('expected one output in raw_output_contents');
    }
    const out = response.outputs[0];
    if (out.name !== 'OUTPUT0' || out.datatype !== 'FP32') fail(`${out.name} ${out.datatype}`);
    if (out.shape.length !== 2 || out.shape[0] !== ROWS || out.shape[1] !== OUT_COLS) {
      fail(`shape [${out.shape}] is not [2, 8]`);
    }
    const body = response.raw_output_contents[0];
    if (body.length !== 4 * ROWS * OUT_COLS) fail(`${body.length} bytes, not 64`);
    const data = [];
    for (let i = 0; i < ROWS * OUT_COLS; i++) data.push(body.readFloatLE(4 * i));
    // A float32 widened to a double prints exactly: it parses back to the same float32.
    const answer = { model_name: response.model_name, OUTPUT0: { shape: out.shape, data } };
    process.stdout.write(JSON.stringify(answer) + '\n');
  });
}

main();
