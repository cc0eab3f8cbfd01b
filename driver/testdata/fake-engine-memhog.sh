#!/bin/sh
# A stand-in engine that allocates without bound (tail keeps the whole
# "line" of /dev/zero in memory) until the task's memory limit stops it.
echo "memhog started: $*"
exec tail /dev/zero
