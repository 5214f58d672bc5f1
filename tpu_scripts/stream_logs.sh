#!/usr/bin/env bash
# Follow one worker's pretraining log (default worker 0): WORKER=3 bash tpu_scripts/stream_logs.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
require PROJECT "the GCP project"
WORKER="${WORKER:-0}"
tpu_ssh "${WORKER}" "tail -n 50 -F ${LOG}"
