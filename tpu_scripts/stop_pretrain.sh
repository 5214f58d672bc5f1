#!/usr/bin/env bash
# SIGTERM the run on every host (the pid launch_pretrain.sh recorded): each process saves a
# checkpoint at a step all agree on, then exits with `terminated`, status 143 (not finished:
# relaunching with the same WORKDIR resumes).
set -euo pipefail
source "$(dirname "$0")/common.sh"
require PROJECT "the GCP project"
tpu_ssh all "if [ -f ${PID_FILE} ]; then kill -TERM \$(cat ${PID_FILE}) || true; fi"
