#!/usr/bin/env bash
# Builds the Prometheus the Consul-SD scrape test runs (deploy/prometheus_test.go)
# from tools/prometheus and caches it outside the tree: Debian's prometheus
# (2.42) has no Consul SD. Only the Consul service discovery is compiled in
# (Prometheus's remove_all_sd / enable_consul_sd build tags), which keeps the
# build to a few minutes on 2 cores; the web UI assets are left out (the test
# uses the HTTP API only). Idempotent: a cached binary of the right version is
# reused.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${LLORCH_CACHE:-$HOME/.cache/llorch}
bin=$cache/bin/prometheus
want=$(awk '{for (i = 1; i < NF; i++) if ($i == "github.com/prometheus/prometheus") {print $(i+1); exit}}' "$root/tools/prometheus/go.mod")
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | head -1 | grep -q "version ${want} "; then
  echo "$bin"; exit 0
fi
mkdir -p "$cache/bin"
cd "$root/tools/prometheus"
# -p 2: the machines are 2 cores; more only thrashes. The build (about 4
# minutes on 2 cores) takes the machine-wide lock heavy llorch work shares,
# unless the caller already holds it (LLORCH_HEAVY_LOCK_HELD=1).
lock=(flock /tmp/llorch-heavy.lock)
[ -z "${LLORCH_HEAVY_LOCK_HELD:-}" ] && command -v flock >/dev/null || lock=()
CGO_ENABLED=0 "${lock[@]}" go build -p 2 -trimpath -tags remove_all_sd,enable_consul_sd \
  -ldflags "-X github.com/prometheus/common/version.Version=${want} -X github.com/prometheus/common/version.Branch=llorch-tools" \
  -o "$bin.tmp" github.com/prometheus/prometheus/cmd/prometheus >&2
mv "$bin.tmp" "$bin"
echo "$bin"
