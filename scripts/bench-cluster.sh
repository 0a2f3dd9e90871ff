#!/usr/bin/env bash
# Runs `ash bench` against one process on Postgres and against a coordinator with RUNNERS
# runners (1) on Postgres, alternating ROUNDS times (3), with CONCURRENCY sessions taking turns
# at once for the throughput rows (10; 0 skips them). Reports:
# docs/benchmarks/2026-12-03-coordinator-and-runner.md, 2026-12-04-cluster-throughput.md.
# Needs a release build (cargo build --release -p ash-cli) and the local test Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
ASH=$PWD/target/release/ash
export ASH_BRIDGE_BIN=$PWD/target/release/ash-bridge ASH_API_KEY=bench-key-of-the-bench-cluster
TOKEN=bench-cluster-token-of-at-least-32-bytes-long
PG=${ASH_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
ROUNDS=${ROUNDS:-3} RUNNERS=${RUNNERS:-1} CONCURRENCY=${CONCURRENCY:-10}

wait_for() { until grep -q "$1" "$2" 2>/dev/null; do sleep 0.1; done; }

run() {
  local schema=bench_$1_$RANDOM pids=()
  psql -q "$PG" -c "CREATE SCHEMA $schema"
  local db="$PG?options=-c%20search_path%3D$schema"
  local coordinator runner
  coordinator=$(mktemp -d) runner=$(mktemp -d)
  # One machine: the nodes share a folder as their snapshot store.
  export ASH_SNAPSHOT_STORE=$runner/snapshot-store
  if [ "$1" = single ]; then
    ASH_DATA_DIR=$coordinator ASH_DATABASE_URL=$db "$ASH" start --port 4301 >"$coordinator/out" 2>"$coordinator/err" &
    pids+=($!)
    wait_for listening "$coordinator/out"
  else
    ASH_DATA_DIR=$coordinator ASH_DATABASE_URL=$db ASH_CLUSTER_TOKEN=$TOKEN "$ASH" start --port 4301 >"$coordinator/out" 2>"$coordinator/err" &
    pids+=($!)
    wait_for listening "$coordinator/out"
    for n in $(seq "$RUNNERS"); do
      mkdir "$runner/$n"
      ASH_DATA_DIR=$runner/$n ASH_DATABASE_URL=$db ASH_CLUSTER_TOKEN=$TOKEN "$ASH" runner --port $((4301 + n)) --coordinator http://127.0.0.1:4301 >"$runner/$n/out" 2>"$runner/$n/err" &
      pids+=($!)
      wait_for "joined the cluster" "$runner/$n/err"
    done
  fi
  "$ASH" bench --server http://127.0.0.1:4301 --sessions 30 --messages 300 --concurrency "$CONCURRENCY" 2>&1 | grep '^|'
  kill "${pids[@]}"
  wait "${pids[@]}" || true
  psql -q "$PG" -c "SET client_min_messages = warning; DROP SCHEMA $schema CASCADE"
  rm -rf "$coordinator" "$runner"
}

for i in $(seq "$ROUNDS"); do
  echo "== one process, round $i"; run single
  echo "== coordinator + $RUNNERS runner(s), round $i"; run cluster
done
