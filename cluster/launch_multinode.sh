#!/usr/bin/env bash
# Multi-node training without ssh: run this once on every node (e.g. from a scheduler), each with its NODE_RANK.
#
#   NODE_RANK=0 MASTER_ADDR=10.0.0.1 cluster/launch_multinode.sh --config paper --out runs/paper data.shards=...
#   NODE_RANK=1 MASTER_ADDR=10.0.0.1 cluster/launch_multinode.sh --config paper --out runs/paper data.shards=...
#
# Environment: NODE_RANK (required), MASTER_ADDR (rank 0's address, default 127.0.0.1), MASTER_PORT (29500),
# HOSTFILE (cluster/hostfile: one line per node, "<name> slots=<ranks on that node>"; the names only have to be
# distinct, nothing connects to them), DS_ACCELERATOR (cpu on machines without GPUs).
# Everything after the script name goes to `python -m weaktok.train`.
set -euo pipefail
: "${NODE_RANK:?set NODE_RANK (0 .. number of nodes - 1)}"
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
HOSTFILE=${HOSTFILE:-cluster/hostfile}
DEEPSPEED=${DEEPSPEED:-deepspeed}
[ -f "$HOSTFILE" ] || { echo "launch_multinode.sh: hostfile not found: $HOSTFILE" >&2; exit 2; }
exec "$DEEPSPEED" --hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --module weaktok.train "$@"
