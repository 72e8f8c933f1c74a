#!/usr/bin/env bash
# Submit weaktok training or sweeps to a Ray cluster as Ray jobs, and follow them.
#
#   ray_jobs/submit.sh train --config demo --out /shared/runs/r1 --workers 4 data.shards=/shared/shards/x
#     (one GPU per worker when the cluster has GPUs: --gpus-per-worker auto, the default; 0 forces CPU)
#   ray_jobs/submit.sh sweep --config demo --space cluster/sweeps/default.yaml --out /shared/sweeps/s1 ...
#   ray_jobs/submit.sh status JOB_ID | logs JOB_ID | stop JOB_ID | list
#
# RAY_ADDRESS: the head's job server, default http://127.0.0.1:8265.
# Token authentication stays on (Ray's default since 2.59). On the head machine the CLI finds the token in
# ~/.ray/auth_token; from elsewhere, run `ray get-auth-token` on the head and export RAY_AUTH_TOKEN=<token> here.
# The job runs `python` from the cluster nodes' PATH: install weaktok's dependencies there (cluster/ray-cluster.yaml).
set -euo pipefail
export RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}  # the job client does not switch token auth on by itself
RAY=${RAY:-ray}
cmd=${1:?usage: submit.sh train|sweep ARGS... | status|logs|stop JOB_ID | list}
shift
cd "$(dirname "$0")/.."
case "$cmd" in
  train|sweep)
    # DS_ACCELERATOR is passed on only when exported here: unset, each worker picks cuda or cpu by the GPU it got.
    # RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1: a worker that requested no GPU sees none (Ray would leave it all of them).
    accel=${DS_ACCELERATOR:+"\"DS_ACCELERATOR\": \"$DS_ACCELERATOR\", "}
    env_json=$(printf '{"env_vars": {%s"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1", "PYTHONUNBUFFERED": "1"}}' "$accel")
    # a head that just started has no job agent yet ("No available agent"): retry for up to a minute
    for attempt in $(seq 1 30); do
      if out=$("$RAY" job submit --working-dir . --runtime-env-json "$env_json" --no-wait \
               -- python "ray_jobs/$cmd.py" "$@" 2>&1); then
        echo "$out"; exit 0
      fi
      case "$out" in *"No available agent"*) sleep 2 ;; *) echo "$out" >&2; exit 1 ;; esac
    done
    echo "$out" >&2; exit 1 ;;
  status) exec "$RAY" job status "$@" ;;
  logs)   exec "$RAY" job logs "$@" ;;
  stop)   exec "$RAY" job stop "$@" ;;
  list)   exec "$RAY" job list ;;
  *) echo "submit.sh: unknown command '$cmd' (train, sweep, status, logs, stop, list)" >&2; exit 2 ;;
esac
