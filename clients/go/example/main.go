// Command simple_mlp_example calls ModelInfer on the demo model simple_mlp with a fixed
// 2x16 FP32 input, a route key and a deadline, checks the answer's form and prints
// OUTPUT0 as JSON on stdout.
//
//	simple_mlp_example HOST:PORT [ROUTE_KEY] [TIMEOUT_MS]
//
// Exit status: 0 ok, 1 the RPC failed (status on stderr), 2 an answer of the wrong form.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "tensorgate/inference"
)

const rows, cols, outCols = 2, 16, 8

type tensor struct {
	Shape []int64   `json:"shape"`
	Data  []float32 `json:"data"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "wrong answer: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintf(os.Stderr, "usage: %s HOST:PORT [ROUTE_KEY] [TIMEOUT_MS]\n", os.Args[0])
		os.Exit(64)
	}
	routeKey := ""
	if len(os.Args) > 2 {
		routeKey = os.Args[2]
	}
	timeoutMs := 5000
	if len(os.Args) > 3 {
		var err error
		if timeoutMs, err = strconv.Atoi(os.Args[3]); err != nil {
			fmt.Fprintf(os.Stderr, "TIMEOUT_MS: %v\n", err)
			os.Exit(64)
		}
	}

	// grpc-go 1.33 (Debian's) predates credentials/insecure; WithInsecure is its spelling.
	conn, err := grpc.Dial(os.Args[1], grpc.WithInsecure())
	if err != nil {
		fmt.Fprintf(os.Stderr, "dial: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()
	client := pb.NewGRPCInferenceServiceClient(conn)

	// The same input as tests/clients: x[r][c] = (c - 8) * (r + 1) / 8, exact in FP32.
	// v2 raw contents are little-endian.
	raw := make([]byte, 0, 4*rows*cols)
	for r := 0; r < rows; r++ {
		for c := 0; c < cols; c++ {
			v := float32(c-8) * float32(r+1) / 8
			raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(v))
		}
	}
	request := &pb.ModelInferRequest{
		ModelName: "simple_mlp",
		Inputs: []*pb.ModelInferRequest_InferInputTensor{
			{Name: "INPUT0", Datatype: "FP32", Shape: []int64{rows, cols}},
		},
		RawInputContents: [][]byte{raw},
	}

	// The deadline travels to the server as grpc-timeout.
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(timeoutMs)*time.Millisecond)
	defer cancel()
	if routeKey != "" {
		// Both places TensorGate's routing reads a route key from (ignored until it exists).
		ctx = metadata.AppendToOutgoingContext(ctx, "x-tensorgate-route-key", routeKey)
		request.Parameters = map[string]*pb.InferParameter{
			"route_key": {ParameterChoice: &pb.InferParameter_StringParam{StringParam: routeKey}},
		}
	}

	response, err := client.ModelInfer(ctx, request)
	if err != nil {
		st := status.Convert(err)
		fmt.Fprintf(os.Stderr, "ModelInfer failed: %s: %s\n", st.Code(), st.Message())
		os.Exit(1)
	}

	if len(response.Outputs) != 1 || len(response.RawOutputContents) != 1 {
		fail("expected one output in raw_output_contents")
	}
	out := response.Outputs[0]
	if out.Name != "OUTPUT0" || out.Datatype != "FP32" {
		fail("got %s %s, not OUTPUT0 FP32", out.Name, out.Datatype)
	}
	if len(out.Shape) != 2 || out.Shape[0] != rows || out.Shape[1] != outCols {
		fail("shape %v is not [2 8]", out.Shape)
	}
	body := response.RawOutputContents[0]
	if len(body) != 4*rows*outCols {
		fail("%d bytes, not 64", len(body))
	}
	data := make([]float32, rows*outCols)
	for i := range data {
		data[i] = math.Float32frombits(binary.LittleEndian.Uint32(body[4*i:]))
	}
	// encoding/json writes a float32 in the fewest digits that parse back to it.
	answer := map[string]interface{}{
		"model_name": response.ModelName,
		"OUTPUT0":    tensor{Shape: out.Shape, Data: data},
	}
	if err := json.NewEncoder(os.Stdout).Encode(answer); err != nil {
		fmt.Fprintf(os.Stderr, "json: %v\n", err)
		os.Exit(1)
	}
}
