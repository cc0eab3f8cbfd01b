#!/usr/bin/env bash
# The Debian packages the test suite and the benchmarks need, in one list
# (.ci/run and `make test` as root both call this). Needs root; idempotent:
# when every package is installed it does nothing (no apt-get update).
# `scripts/install-deps.sh --list` prints the list.
set -euo pipefail
pkgs=(
  ca-certificates   # module proxy and apt over https
  curl              # scripts/demo.sh
  gcc libc6-dev     # cgo (go-nvml) in bin/llorch
  iproute2          # e2e: network namespaces (ip netns, veth)
  protobuf-compiler # make proto (scripts/gen-proto.sh)
  chromium          # router/ui_test.go renders /ui headless
  nginx             # make bench: the reverse-proxy baseline
)
if [ "${1:-}" = --list ]; then printf '%s\n' "${pkgs[@]}"; exit 0; fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present" >&2; exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${missing[*]}; run as root: sudo $0" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-deps: installing ${missing[*]}" >&2
apt-get update -qq
# policy-rc.d 101: packages with a service (nginx) must not start it; the
# tests and benchmarks run their own on free ports.
prc=/usr/sbin/policy-rc.d
had_prc=; [ -e "$prc" ] && had_prc=1
[ -n "$had_prc" ] || { printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod +x "$prc"; }
trap '[ -n "$had_prc" ] || rm -f "$prc"' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done" >&2
