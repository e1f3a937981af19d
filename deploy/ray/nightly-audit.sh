#!/usr/bin/env bash
# The nightly audit on the Ray cluster this machine is the head of (see README.md beside this file).
#   nightly-audit.sh CONFIG INPUT OUT STORE_URL [WORKERS] [GPUS_PER_WORKER]
# Exit code: the audit's (0 done, 1 some images failed, 3 incomplete: run it again, it continues).
# The cluster runs with Ray's token authentication (RAY_AUTH_MODE=token, README.md): the token comes from
# RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token of the user running this
# (under cron: that user's HOME). For a cluster started without it, run with RAY_AUTH_MODE=disabled.
set -euo pipefail
if [ "$#" -lt 4 ]; then
    echo "usage: $0 CONFIG INPUT OUT STORE_URL [WORKERS] [GPUS_PER_WORKER]" >&2
    exit 2
fi
config=$1 input=$2 out=$3 store=$4 workers=${5:-2} gpus=${6:-1}
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
exec inspector audit -c "$config" "$input" --out "$out" --store "$store" \
    --engine ray --ray-address auto --workers "$workers" --gpus-per-worker "$gpus"
