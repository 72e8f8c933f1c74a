#!/usr/bin/env bash
# weaktok training under torchrun (no deepspeed launcher, no ssh): run it once per node.
#
#   one node:   NPROC=8 cluster/torchrun.sh --config paper --out /shared/runs/p data.shards=/shared/shards/fsld
#               NPROC=2 DS_ACCELERATOR=cpu cluster/torchrun.sh --config tiny --out runs/t data.shards=...   # CPU
#   many nodes: on every node, the same command with its own NODE_RANK:
#               NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=10.0.0.1:29500 NPROC=8 cluster/torchrun.sh --config paper ...
#
# Environment: NPROC (ranks on this node, default 1: one per GPU), NNODES (default 1), NODE_RANK (0 .. NNODES-1,
# required with NNODES > 1), RDZV_ENDPOINT (host:port every node reaches, required with NNODES > 1),
# RDZV_BACKEND (c10d: the node at RDZV_ENDPOINT hosts the rendezvous, global ranks go by arrival; static: NODE_RANK
# fixes them, RDZV_ENDPOINT is node 0's address), RDZV_ID (default weaktok: one per job), MAX_RESTARTS (default 0;
# torchrun restarts every rank and the loop resumes from the newest checkpoint, train.resume: auto),
# TORCHRUN (default torchrun), DS_ACCELERATOR (cpu on machines without GPUs).
# Everything after the script name goes to `python -m weaktok.train`. --out must be on storage every node reaches.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # weaktok from this checkout, installed or not
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}
TORCHRUN=${TORCHRUN:-torchrun}
if [ "$NNODES" = 1 ]; then
  exec "$TORCHRUN" --standalone --nnodes 1 --nproc-per-node "$NPROC" -m weaktok.train "$@"
fi
: "${NODE_RANK:?set NODE_RANK (0 .. NNODES - 1)}"
: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT (host:port of the rendezvous, reachable from every node)}"
exec "$TORCHRUN" --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" \
  --rdzv-backend "${RDZV_BACKEND:-c10d}" --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "${RDZV_ID:-weaktok}" \
  --max-restarts "${MAX_RESTARTS:-0}" -m weaktok.train "$@"
