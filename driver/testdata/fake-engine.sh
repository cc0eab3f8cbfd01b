#!/bin/sh
# A stand-in engine for the driver's lifecycle tests (started through the
# llamacpp adapter, whose arguments it ignores). It writes to stdout and
# stderr, and reacts the way the test's environment asks:
#   FAKE_ON_INT=ignore   ignore SIGINT (tests kill_timeout escalation)
#   FAKE_EXIT_FILE=path  exit with the code written into that file
echo "fake engine started: $*"
echo "fake engine stderr line" >&2
if [ "$FAKE_ON_INT" = ignore ]; then
  trap 'echo "ignoring SIGINT"' INT
else
  trap 'echo "got SIGINT"; exit 0' INT
fi
trap 'echo "got SIGUSR1"' USR1
while :; do
  if [ -n "$FAKE_EXIT_FILE" ] && [ -s "$FAKE_EXIT_FILE" ]; then
    code=$(cat "$FAKE_EXIT_FILE")
    echo "exiting with $code"
    exit "$code"
  fi
  # In the background so traps run at once instead of after the sleep.
  sleep 0.1 &
  wait $!
done
