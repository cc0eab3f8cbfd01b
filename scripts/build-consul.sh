#!/usr/bin/env bash
# Builds the Consul agent the tests run against (v1.14.11, the last MPL line the
# module proxy serves whole) from tools/consul and caches it outside the tree.
# Idempotent: a cached binary of the right version is reused.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${LLORCH_CACHE:-$HOME/.cache/llorch}
bin=$cache/bin/consul
want=v1.14.11
if [ -x "$bin" ] && "$bin" version 2>/dev/null | head -1 | grep -q "Consul ${want}"; then
  echo "$bin"; exit 0
fi
mkdir -p "$cache/bin"
cd "$root/tools/consul"
# -p 2: the machines are 2 cores; more only thrashes.
CGO_ENABLED=0 go build -p 2 -trimpath -o "$bin.tmp" github.com/hashicorp/consul >&2
mv "$bin.tmp" "$bin"
echo "$bin"
