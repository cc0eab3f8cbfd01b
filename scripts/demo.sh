#!/usr/bin/env bash
# make demo: the home profile with a real engine (llama.cpp's llama-server)
# and the generated demo model, then one real chat request. Idempotent: a
# demo already running is reused. Stop it with `make demo-stop` or
# `scripts/demo.sh stop` (SIGTERM: llorch home stops its engine, then exits).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache=${LLORCH_CACHE:-$HOME/.cache/llorch}
state=${LLORCH_DEMO_STATE:-$cache/demo}
addr=${LLORCH_DEMO_ADDR:-127.0.0.1:8080}
mkdir -p "$cache/models" "$state"

pidfile=$state/home.pid
# A pid file from an earlier demo counts only while that pid is still a
# `llorch home` (pids are reused).
running() { [ -f "$pidfile" ] && tr '\0' ' ' <"/proc/$(cat "$pidfile")/cmdline" 2>/dev/null | grep -q 'llorch home'; }
if [ "${1:-}" = stop ]; then
  if running; then
    pid=$(cat "$pidfile"); kill "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "stopped llorch home (pid $pid)"
  else
    echo "no demo running"
  fi
  rm -f "$pidfile"; exit 0
fi


echo "==> engine: llama.cpp llama-server"
engine=$(scripts/get-llama-server.sh)
echo "==> building bin/llorch"
# go-nvml's cgo preamble uses deprecated NVML declarations; keep the build quiet.
export CGO_CFLAGS=${CGO_CFLAGS:-"-O2 -g -Wno-deprecated-declarations"}
CGO_ENABLED=1 go build -o bin/llorch .
model=$cache/models/tiny.gguf
# Regenerated every time (milliseconds, byte-identical for the same llorch),
# so a model cached by an older llorch is replaced.
bin/llorch gen-model -o "$model.new" >/dev/null
if cmp -s "$model.new" "$model"; then rm -f "$model.new"; else mv "$model.new" "$model"; fi

if running; then
  echo "==> home profile already running (pid $(cat "$pidfile"))"
else
  echo "==> starting the home profile on $addr (log: $state/home.log)"
  nohup bin/llorch home --model "$model" --engine-bin "$engine" --state-dir "$state" --addr "$addr" >"$state/home.log" 2>&1 &
  echo $! >"$pidfile"
fi

token_file=$state/api.token
ready=
for _ in $(seq 1 600); do
  if [ -f "$token_file" ] && curl -fsS -H "Authorization: Bearer $(cat "$token_file")" "http://$addr/v1/models" 2>/dev/null | grep -q '"tiny"'; then
    ready=1; break
  fi
  # Alive, not its cmdline: just after the fork the child is still this
  # shell (no "llorch home" in /proc/<pid>/cmdline yet) on a loaded machine.
  pid=$(cat "$pidfile")
  if ! kill -0 "$pid" 2>/dev/null || [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ]; then
    echo "llorch home exited; its log:" >&2; tail -20 "$state/home.log" >&2; exit 1
  fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "the home profile did not serve model tiny within 60 s; its log:" >&2; tail -20 "$state/home.log" >&2; exit 1
fi

# Default sampling, as any client would send it: the demo model answers the
# same sentence every time (internal/ggufgen).
echo "==> POST /v1/chat/completions"
reply=$(curl -fsS "http://$addr/v1/chat/completions" \
  -H "Authorization: Bearer $(cat "$token_file")" -H 'Content-Type: application/json' \
  -d '{"model":"tiny","messages":[{"role":"user","content":"Hello, llorch!"}],"max_tokens":64}')
echo "$reply"
content=$(printf '%s' "$reply" | sed -n 's/.*"content":"\(\([^"\\]\|\\.\)*\)".*/\1/p')
echo
echo "reply: $content"
echo
echo "Try it yourself:"
echo "  curl http://$addr/v1/chat/completions -H \"Authorization: Bearer \$(cat $token_file)\" -H 'Content-Type: application/json' -d '{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"
echo "It keeps running. Stop it: make demo-stop   (or: scripts/demo.sh stop)"
