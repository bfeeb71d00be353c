#!/usr/bin/env bash
# make run: rankd on its embedded default, on this machine, from nothing.
#
#   1. a model: trained by rankd on MovieLens (../shared/data/movielens-small,
#      or RANKD_DEMO_DATA) when present, else on `rankd synth` events;
#      kept in build/run/ for the next run;
#   2. redis-server and the Kafka dev broker on free loopback ports;
#   3. rankd serve (configs/default.yaml, overridden by RANKD_* variables);
#   4. a stream of events fed to its input topic, and its ranked lists
#      printed as they come out, with item titles when the data has them.
#
# Ctrl-C stops everything it started. RANKD_DEMO_SECONDS=N stops by itself
# after N seconds of streaming and exits 0.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rankd=${RANKD_BIN:-$here/build/rankd}
dir=$here/build/run
mkdir -p "$dir"
data=${RANKD_DEMO_DATA:-$here/../shared/data/movielens-small}
rate=${RANKD_DEMO_RATE:-20}
pids=()

cleanup() { # in reverse order: the service commits before its broker goes
  trap - INT TERM EXIT
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 0' INT TERM

free_port() { # a loopback port nothing listens on
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  echo "run.sh: no free port found" >&2; exit 1
}

# ---- 1. the model and the event stream --------------------------------------
if [ -f "$data/ratings.csv" ]; then
  kind=movielens; titles=(--titles "$data"); triggers="4,5"
  [ -f "$dir/events.jsonl" ] || "$rankd" export "$data" --out "$dir/events.jsonl"
  train=("$data")
else
  kind=synth; titles=(); triggers="click,purchase"
  [ -f "$dir/events.jsonl" ] || "$rankd" synth --out "$dir/events.jsonl"
  train=("$dir/events.jsonl")
fi
model=$dir/model-$kind.int8.safetensors
if [ ! -f "$model" ]; then
  echo "== training a model on $kind data (once; kept in $dir)"
  "$rankd" train "${train[@]}" --out "$dir/model-$kind.safetensors" --d-model 32 --d-ffn 64 \
    --max-hist 50 --dropout 0.2 --epochs 12 --eval-every 4 --group 16 --extra-groups 2 --lr 0.002
  "$rankd" quantize "$dir/model-$kind.safetensors" "$model"
fi

# ---- 2. redis-server and the Kafka dev broker --------------------------------
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$dir" --logfile "$dir/redis.log" &
pids+=($!)
rm -f "$dir/broker.addr"
"$rankd" dev-broker --address-file "$dir/broker.addr" >"$dir/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$dir/broker.addr" ] && break; sleep 0.1; done
brokers=$(cat "$dir/broker.addr")
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

# ---- 3. rankd serve ------------------------------------------------------------
http_port=$(free_port)
RANKD_KAFKA_BROKERS=$brokers RANKD_REDIS_PORT=$redis_port RANKD_MODEL_PATH=$model \
RANKD_HTTP_PORT=$http_port RANKD_RANKING_TRIGGER_TYPES=$triggers RANKD_RANKING_K=5 \
  "$rankd" serve 2>"$dir/serve.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "consuming" "$dir/serve.log" && break; sleep 0.1; done
echo "== rankd serve: Kafka $brokers, Redis 127.0.0.1:$redis_port, HTTP http://127.0.0.1:$http_port"
echo "   (log: $dir/serve.log; try: curl http://127.0.0.1:$http_port/metrics)"

# ---- 4. events in, ranked lists out ---------------------------------------------
"$rankd" feed "$dir/events.jsonl" --brokers "$brokers" --rate "$rate" --loop 2>"$dir/feed.log" &
pids+=($!)
echo "== feeding $kind events at $rate/s; a ranked list for each ${triggers//,/ or } interaction:"
"$rankd" watch --brokers "$brokers" "${titles[@]}" &
pids+=($!)
if [ -n "${RANKD_DEMO_SECONDS:-}" ]; then
  sleep "$RANKD_DEMO_SECONDS"
  echo "== $RANKD_DEMO_SECONDS s of streaming done"
  curl -s "http://127.0.0.1:$http_port/metrics" 2>/dev/null | grep -E '^rankd_(events_total\{type="interaction"|rankings_published|dead_lettered)' || true
  exit 0
fi
wait
