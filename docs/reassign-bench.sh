#!/usr/bin/env bash
# Issue 6's measurement of moving a partition (`tide partitions reassign`): one 1 GiB partition
# (RF 1) moved between the two brokers of a `tide dev` cluster, first unthrottled, then back
# with a 100 MiB/s throttle, each timed from submission until `--wait` returns; the machine's
# limits are measured in the same run (`tide bench limits`). The figures in docs/benchmarks.md.
#
#   cargo build --release -p tideline-cli && docs/reassign-bench.sh
#
# Environment: TIDE (default target/release/tide), WORK (a directory on the disk to measure;
# default a new one under /tmp).
set -euo pipefail
TIDE=${TIDE:-target/release/tide}
WORK=${WORK:-$(mktemp -d /tmp/tide-reassign.XXXXXX)}
rm -rf "$WORK"
mkdir -p "$WORK"
"$TIDE" dev --brokers 2 --coordinators 1 --data-dir "$WORK/data" --controller-port 0 \
  --broker-port 0 --coordinator-port 0 >"$WORK/dev.out" 2>&1 &
DEV=$!
trap 'kill -TERM $DEV; wait $DEV || true' EXIT
for _ in $(seq 1 240); do
  grep -q "export TIDELINE_BOOTSTRAP=" "$WORK/dev.out" && break
  sleep 0.5
done
TIDELINE_BOOTSTRAP=$(sed -n 's/.*export TIDELINE_BOOTSTRAP=//p' "$WORK/dev.out" | head -1)
export TIDELINE_BOOTSTRAP
"$TIDE" bench limits --dir "$WORK" --mib 1024 --output json >"$WORK/limits.json"
"$TIDE" bench produce --topic big --records 1048576 --record-size 1024 --acks 1 \
  --output json >"$WORK/produce.json"

leader() {
  "$TIDE" topic describe big --output json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["partitions"][0]["leader"])'
}

move() { # throttle in bytes/s, 0 for none
  local from to start end
  from=$(leader)
  to=$((from == 1 ? 2 : 1))
  echo '{"partitions":[{"topic":"big","partition":0,"replicas":['"$to"']}]}' >"$WORK/plan.json"
  start=$(date +%s.%N)
  "$TIDE" partitions reassign --plan "$WORK/plan.json" --throttle "$1" --wait >/dev/null 2>&1
  end=$(date +%s.%N)
  python3 - "$start" "$end" "$(du -sb "$WORK/data/broker-$to/big-0" | cut -f1)" "$1" <<'PY'
import sys
start, end, size, throttle = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
took = end - start
print(f"throttle {throttle} B/s: {size / 2**20:.0f} MiB in {took:.2f} s = {size / took / 2**20:.0f} MiB/s")
PY
}

move 0
move 104857600
python3 - "$WORK/limits.json" <<'PY'
import json, sys
l = json.load(open(sys.argv[1]))
print("limits MiB/s: " + ", ".join(f"{k} {v:.0f}" for k, v in l.items() if k.endswith("_mib_s")))
PY
