#!/usr/bin/env bash
# Shared settings for the TPU pod scripts. Override any of them in the environment, e.g.
#   TPU_NAME=crema-v5p-64 ACCELERATOR=v5p-64 ZONE=us-east5-a bash tpu_scripts/create_pod.sh
# shellcheck disable=SC2034  # variables are used by the scripts that source this file

PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
ZONE="${ZONE:-us-central2-b}"              # v4 lives in us-central2-b; v5p/v6e: see gcloud docs.
TPU_NAME="${TPU_NAME:-crema-pod}"
ACCELERATOR="${ACCELERATOR:-v4-32}"        # v4-32 = 16 chips on 4 hosts; v5p-64, v6e-16 ...
# Runtime image per generation: v4 tpu-ubuntu2204-base, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e.
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
# Empty REPO_URL: copy this checkout (git archive of HEAD) to every worker instead of cloning.
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-main}"
REMOTE_DIR="${REMOTE_DIR:-crema_jax}"      # checkout on every worker, relative to $HOME
PREEMPTIBLE="${PREEMPTIBLE:-0}"            # 1 = spot capacity (cheaper, may be preempted)
LOG="${LOG:-/tmp/crema_pretrain.log}"      # per-host log of the run
PID_FILE="${PID_FILE:-/tmp/crema_pretrain.pid}"

# All gcloud calls for the slice.
tpu_ssh() {
  # Usage: tpu_ssh WORKER COMMAND   (WORKER = all | 0 | 1 ...)
  local worker="$1"
  shift
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
    --worker="${worker}" --command="$*"
}

require() {
  # Usage: require VAR_NAME "what it is"
  local name="$1"
  if [[ -z "${!name:-}" ]]; then
    echo "error: set ${name} ($2)" >&2
    exit 2
  fi
}
