#!/usr/bin/env bash
# `make test`: everything CI runs, from a fresh machine, in timed phases.
# As root it installs the Debian packages first (scripts/install-deps.sh)
# and sets LLORCH_REQUIRE_INTEGRATION=1, so a missing prerequisite fails
# instead of skipping; without root the integration tests that cannot run
# skip, and the run ends with a table of each one and the command that
# enables it. Every phase's time is printed at the end.
#
#   scripts/test.sh [PHASE...]   (default: all; `make e2e` runs the e2e ones)
#
# Under the machine-wide heavy lock, tell the Prometheus build not to take
# it again: flock /tmp/llorch-heavy.lock env LLORCH_HEAVY_LOCK_HELD=1 make test
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export LLORCH_CACHE=${LLORCH_CACHE:-$HOME/.cache/llorch}
# go-nvml's cgo preamble uses deprecated NVML declarations.
export CGO_CFLAGS=${CGO_CFLAGS:-"-O2 -g -Wno-deprecated-declarations"}
if [ "$(id -u)" -eq 0 ]; then export LLORCH_REQUIRE_INTEGRATION=${LLORCH_REQUIRE_INTEGRATION:-1}; fi
fuzztime=${LLORCH_FUZZTIME:-10s}
work=$(mktemp -d)
# .ci/run records its own phases (apt) in the same file.
phases=${LLORCH_PHASE_LOG:-$work/phases}
skips=$work/skips
touch "$phases" "$skips"

# Packages whose tests exercise goroutines and locks: run again under -race.
race_pkgs=(./router/ ./router/admission/ ./router/discovery/ ./scheduler/ ./engine/supervise/ ./driver/ ./home/)

deps_install() {
  if [ "$(id -u)" -eq 0 ]; then scripts/install-deps.sh; else
    scripts/install-deps.sh || echo "(not root: tests that need these packages skip; see the table at the end)"
  fi
}
consul() { scripts/build-consul.sh >/dev/null; }
prometheus() { scripts/build-prometheus.sh >/dev/null; }
llama_server() { scripts/get-llama-server.sh >/dev/null; }
build() { CGO_ENABLED=1 go build -o bin/llorch .; }
vet() { go vet ./...; }
unit() {
  # shellcheck disable=SC2046
  LLORCH_BIN=$root/bin/llorch go test -json -count=1 -timeout 30m $(go list ./... | grep -v /e2e$) |
    go run ./internal/testreport -name unit -skips "$skips"
}
race() {
  LLORCH_BIN=$root/bin/llorch go test -race -json -count=1 -timeout 30m "${race_pkgs[@]}" |
    go run ./internal/testreport -name race -skips "$skips"
}
fuzz() {
  # Every fuzz target in the module, each for $fuzztime.
  local targets=() pkg line
  local names=()
  while read -r line; do
    case $line in
      Fuzz*) names+=("$line") ;;
      "ok "*) pkg=$(awk '{print $2}' <<<"$line"); for n in "${names[@]}"; do targets+=("$pkg $n"); done; names=() ;;
      *) names=() ;;
    esac
  done < <(go test -list '^Fuzz' ./... 2>&1)
  [ ${#targets[@]} -gt 0 ] || { echo "no fuzz targets found" >&2; return 1; }
  local t
  for t in "${targets[@]}"; do
    set -- $t
    echo "fuzz $2 ($1, $fuzztime)"
    go test -run '^$' -fuzz "^$2\$" -fuzztime "$fuzztime" "$1" 2>&1 | grep -vE '^fuzz: elapsed' || return 1
  done
}
timing() {
  go test -count=1 -v -run '^TestTimingSafeEqualIsConstantTime$' ./authmin/ | grep -E 'authmin timing|^(ok|FAIL|---)'
  go test -count=1 -v -run '^TestKeyCheckIsConstantTime$' ./router/keys/ | grep -E 'keys timing|^(ok|FAIL|---)'
}
e2e() {
  LLORCH_BIN=$root/bin/llorch go test -json -count=1 -timeout 20m -run 'TestE2E' ./e2e/ |
    go run ./internal/testreport -name e2e -show '^e2e: ' -skips "$skips"
}

summary() {
  local rc=$?
  echo
  echo "PHASE                 TIME     RESULT"
  while IFS=$'\t' read -r name secs res; do
    printf '%-20s %5ss     %s\n' "$name" "$secs" "$res"
  done <"$phases"
  if [ -s "$skips" ]; then
    echo
    echo "SKIPPED (each needs what the right-hand column installs or runs):"
    sort -u "$skips" | awk -F'\t' '{sub("github.com/llorch/llorch/","",$1); printf "  %s %s: %s -> %s\n", $1, $2, $3, ($4==""?"-":$4)}'
    [ "$(id -u)" -eq 0 ] || echo "  (as root, \`sudo make test\` installs the packages and runs everything)"
  elif [ $rc -eq 0 ]; then
    echo; echo "no test skipped"
  fi
  rm -rf "$work"
  exit $rc
}
trap summary EXIT

run_phase() {
  local name=$1 fn=$2 t0 rc=0
  echo "==> $name"
  t0=$(date +%s)
  "$fn" || rc=$?
  printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" "$([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)")" >>"$phases"
  return $rc
}

all=(deps_install consul prometheus llama_server build vet unit race fuzz timing e2e)
[ $# -gt 0 ] || set -- "${all[@]}"
# LLORCH_KEEP_GOING=1 runs the later phases after a failed one (the exit
# status still says it failed).
failed=0
for p in "$@"; do
  case " ${all[*]} " in *" $p "*) ;; *) echo "unknown phase $p (have: ${all[*]})" >&2; exit 2 ;; esac
  if ! run_phase "${p//_/ }" "$p"; then
    failed=1
    [ -n "${LLORCH_KEEP_GOING:-}" ] || exit 1
  fi
done
exit $failed
