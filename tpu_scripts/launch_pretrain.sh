#!/usr/bin/env bash
# Launch pretraining on ALL hosts of the slice, logs streamed to this terminal.
#
#   WORKDIR=gs://my-bucket/crema_base CONFIG=configs/crema_base.py \
#     DATA_FLAGS="--config.data.cache_dir=gs://my-bucket/cache" bash tpu_scripts/launch_pretrain.sh
#
# Every host runs the same command; jax.distributed.initialize() finds the other hosts by itself
# on a TPU pod (config.train.distributed="auto" sees TPU_WORKER_HOSTNAMES). Checkpoints, metrics
# and TensorBoard events go to the gs:// WORKDIR (Orbax writes gs:// through etils.epath). The data
# must be readable from every host: a gs:// cache (data.cache_dir) or a copy on each local disk.
# Re-running the script resumes from the latest complete checkpoint in WORKDIR.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require PROJECT "the GCP project"
require WORKDIR "a gs:// output folder shared by all hosts, e.g. gs://bucket/run1"
CONFIG="${CONFIG:-configs/crema_base.py}"
DATA_FLAGS="${DATA_FLAGS:-}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"

if [[ "${WORKDIR}" != gs://* ]]; then
  echo "error: WORKDIR must be a gs:// path every host can write (got ${WORKDIR})" >&2
  exit 2
fi

# nohup + a log file on each host: the run survives a dropped ssh session; worker 0's log is
# streamed here (all hosts print the same progress; only process 0 writes metrics).
cmd="cd ${REMOTE_DIR} && nohup python3 -m crema_jax.main pretrain --config=${CONFIG} --workdir=${WORKDIR} \
${DATA_FLAGS} ${EXTRA_FLAGS} > ${LOG} 2>&1 & echo \$! > ${PID_FILE}"
tpu_ssh all "${cmd}"
echo "launched on all workers of ${TPU_NAME}; streaming worker 0 (Ctrl-C stops streaming only)"
bash "$(dirname "$0")/stream_logs.sh"
