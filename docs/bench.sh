#!/usr/bin/env bash
# Issue 5's benchmark scenarios, each against a local cluster that `tide dev` starts, with the
# machine's limits measured in the same run (`--limits`): the figures in docs/benchmarks.md.
#
#   cargo build --release -p tideline-cli && docs/bench.sh
#
# Environment: TIDE (default target/release/tide), RECORDS (records per throughput run,
# default 2000000 of 1 KiB), WORK (a directory on the disk to measure; default a new one
# under /tmp). Each run's JSON report is kept in $WORK/results.
set -euo pipefail

TIDE=${TIDE:-target/release/tide}
RECORDS=${RECORDS:-2000000}
WORK=${WORK:-$(mktemp -d /tmp/tide-bench.XXXXXX)}
RESULTS=$WORK/results
mkdir -p "$RESULTS"
DEV_PID=

start_dev() { # brokers
  local log=$WORK/dev-$1.log
  "$TIDE" dev --brokers "$1" --coordinators 1 --data-dir "$WORK/data-$1" \
    --controller-port 0 --broker-port 0 --coordinator-port 0 >"$log" 2>&1 &
  DEV_PID=$!
  for _ in $(seq 1 240); do
    if grep -q 'export TIDELINE_BOOTSTRAP=' "$log"; then
      export TIDELINE_BOOTSTRAP
      TIDELINE_BOOTSTRAP=$(sed -n 's/.*export TIDELINE_BOOTSTRAP=//p' "$log" | head -1)
      return
    fi
    sleep 0.5
  done
  echo "tide dev did not start; see $log" >&2
  exit 1
}

stop_dev() {
  if [ -n "$DEV_PID" ]; then
    kill -TERM "$DEV_PID" 2>/dev/null || true
    wait "$DEV_PID" 2>/dev/null || true
    DEV_PID=
  fi
  rm -rf "$WORK"/data-*
}
trap stop_dev EXIT

# Before a produce scenario (and its limits): write back dirty pages and, as root, drop the
# clean page cache, so that the disk limit and the broker both write into free memory. Without
# it, each run finds the cache fuller of the runs before and page reclaim slows writes by up to
# 10x, differently from run to run. Never before a consume scenario: those read what the
# produce scenario left in the page cache.
fresh_memory() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

run() { # name, tide bench args...
  local name=$1
  shift
  echo "== $name: tide bench $*"
  "$TIDE" bench "$@" --output json | tee "$RESULTS/$name.json"
}

LIMITS=(--limits --limits-dir "$WORK" --limits-mib 1024)

# One broker, RF=1: produce to 1 partition, then consume it (data port and gRPC, the
# consumer's default 1 MiB fetches and 4 MiB ones) while it is in the page cache; end-to-end
# latency at 10 MiB/s (before the next gigabyte-sized produce, whose writeback would run under
# it); produce to 4 partitions (one producer, and two), and consume those 4 partitions through
# the data port.
start_dev 1
fresh_memory
run produce-rf1-acks1 produce --topic t1 --partitions 1 --records "$RECORDS" --acks 1 \
  --batch-size 1048576 --linger-ms 5 "${LIMITS[@]}"
run consume-data-port consume --topic t1 --records "$RECORDS" "${LIMITS[@]}"
run consume-data-port-4MiB consume --topic t1 --records "$RECORDS" --fetch-max-bytes 4194304 \
  "${LIMITS[@]}"
run consume-grpc consume --topic t1 --records "$RECORDS" --grpc "${LIMITS[@]}"
run consume-grpc-4MiB consume --topic t1 --records "$RECORDS" --grpc --fetch-max-bytes 4194304 \
  "${LIMITS[@]}"
run e2e-10MiBs e2e --topic e2e --partitions 1 --records 100000 --throughput 10240 --acks 1 \
  --linger-ms 0
run e2e-10MiBs-acks-all e2e --topic e2e-all --partitions 1 --records 100000 --throughput 10240 \
  --acks all --linger-ms 0
fresh_memory
run produce-rf1-acks1-4partitions produce --topic t4 --partitions 4 --records "$RECORDS" \
  --acks 1 --batch-size 1048576 --linger-ms 5 "${LIMITS[@]}"
run consume-data-port-4partitions consume --topic t4 --records "$RECORDS" "${LIMITS[@]}"
fresh_memory
run produce-rf1-acks1-4partitions-2producers produce --topic t4p --partitions 4 --producers 2 \
  --records "$RECORDS" --acks 1 --batch-size 1048576 --linger-ms 5 "${LIMITS[@]}"
stop_dev

# Three brokers on this machine: RF=1 acks=1 against RF=3 acks=all, in the same cluster.
start_dev 3
fresh_memory
run produce-3brokers-rf1-acks1 produce --topic r1 --partitions 3 --replication-factor 1 \
  --records "$RECORDS" --acks 1 --batch-size 1048576 --linger-ms 5
fresh_memory
run produce-3brokers-rf3-acksall produce --topic r3 --partitions 3 --replication-factor 3 \
  --records "$RECORDS" --acks all --batch-size 1048576 --linger-ms 5
stop_dev

echo "reports in $RESULTS"
