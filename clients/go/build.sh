#!/usr/bin/env bash
# Generate the Go stubs from proto/ and build the example, offline, with Debian's
# packages: golang-go, protoc-gen-go, protoc-gen-go-grpc and the Go sources they ship
# under /usr/share/gocode (golang-google-grpc-dev, golang-google-protobuf-dev).
#
# GOPATH mode (GO111MODULE=off) is how Debian builds its own Go packages: imports resolve
# against GOPATH entries, so /usr/share/gocode serves as the dependency tree and nothing is
# fetched. Everything goes under clients/go/build (or $1): the generated package at
# gopath/src/tensorgate/inference, the build cache, and bin/simple_mlp_example, whose path
# is printed on the last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto="$(cd "$here/../../proto" && pwd)"
build="${1:-$here/build}"
pkg=tensorgate/inference
gen="$build/gopath/src/$pkg"
example="$build/gopath/src/tensorgate/example"
mkdir -p "$gen" "$example" "$build/bin"

# The .proto files carry no go_package option (they are the public v2 protocol, kept
# as upstream wrote them), so the import path is given here, per file.
maps="Minference/model_config.proto=$pkg,Minference/grpc_service.proto=$pkg"
protoc -I "$proto" \
  --go_out="$gen" --go_opt=paths=source_relative,"$maps" \
  --go-grpc_out="$gen" --go-grpc_opt=paths=source_relative,"$maps" \
  inference/model_config.proto inference/grpc_service.proto
# paths=source_relative keeps the inference/ directory of the .proto files; flatten it
# into the one Go package.
mv -f "$gen"/inference/*.go "$gen"/ && rmdir "$gen/inference"
cp -f "$here/example/main.go" "$example/main.go"

export GO111MODULE=off GOPROXY=off GOFLAGS= GOENV=off \
  GOPATH="$build/gopath:/usr/share/gocode" GOCACHE="$build/cache"
go vet tensorgate/example
go build -o "$build/bin/simple_mlp_example" tensorgate/example
echo "$build/bin/simple_mlp_example"
