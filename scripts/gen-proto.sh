#!/usr/bin/env bash
# Regenerates the Go code for the Nomad plugin protocol from proto/ into
# internal/nomadpb/ (what `make proto` runs). Needs protoc (Debian
# protobuf-compiler) and protoc-gen-go / protoc-gen-go-grpc (in $GOPATH/bin,
# installed with `go install` if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
GOBIN_DIR="$(go env GOPATH)/bin"
export PATH="$GOBIN_DIR:$PATH"
command -v protoc >/dev/null || { echo "gen-proto: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }
command -v protoc-gen-go >/dev/null || go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
command -v protoc-gen-go-grpc >/dev/null || go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
# The well-known types (duration, timestamp) ship with Debian's protoc in
# /usr/include.
protoc -I proto -I /usr/include \
  --go_out=. --go_opt=module=github.com/llorch/llorch \
  --go-grpc_out=. --go-grpc_opt=module=github.com/llorch/llorch \
  proto/nomad/*.proto
echo "gen-proto: regenerated internal/nomadpb from proto/nomad" >&2
