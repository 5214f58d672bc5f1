#!/usr/bin/env bash
# Launch pretraining on ALL hosts of the slice, logs streamed to this terminal.
#
#   WORKDIR=gs://my-bucket/crema_base CONFIG=configs/crema_base.py \
#     CACHE_GCS=gs://my-bucket/cache bash tpu_scripts/launch_pretrain.sh
#
# Every host runs the same command; jax.distributed.initialize() finds the other hosts by itself
# on a TPU pod (config.train.distributed="auto" sees TPU_WORKER_HOSTNAMES). Checkpoints, metrics
# and TensorBoard events go to the gs:// WORKDIR (Orbax writes gs:// through etils.epath). The cache
# reader opens local files, so with CACHE_GCS (a `crema-jax prepare` folder uploaded to GCS) every
# host first copies it to LOCAL_CACHE on its own disk (`gcloud storage rsync`: a relaunch copies
# only what changed) and trains with data.cache_dir=LOCAL_CACHE. Without CACHE_GCS, DATA_FLAGS must
# point at data already on every host's disk.
# Re-running the script resumes from the latest complete checkpoint in WORKDIR.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require PROJECT "the GCP project"
require WORKDIR "a gs:// output folder shared by all hosts, e.g. gs://bucket/run1"
CONFIG="${CONFIG:-configs/crema_base.py}"
DATA_FLAGS="${DATA_FLAGS:-}"
CACHE_GCS="${CACHE_GCS:-}"
LOCAL_CACHE="${LOCAL_CACHE:-/tmp/crema_cache}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"

if [[ "${WORKDIR}" != gs://* ]]; then
  echo "error: WORKDIR must be a gs:// path every host can write (got ${WORKDIR})" >&2
  exit 2
fi

stage=""
if [[ -n "${CACHE_GCS}" ]]; then
  if [[ "${CACHE_GCS}" != gs://* ]]; then
    echo "error: CACHE_GCS must be a gs:// folder made by crema-jax prepare (got ${CACHE_GCS})" >&2
    exit 2
  fi
  stage="mkdir -p ${LOCAL_CACHE} && gcloud storage rsync --recursive ${CACHE_GCS} ${LOCAL_CACHE} && "
  DATA_FLAGS="--config.data.cache_dir=${LOCAL_CACHE} ${DATA_FLAGS}"
fi

# nohup + a log file on each host: the run survives a dropped ssh session; worker 0's log is
# streamed here (all hosts print the same progress; only process 0 writes metrics).
cmd="${stage}cd ${REMOTE_DIR} && nohup python3 -m crema_jax.main pretrain --config=${CONFIG} --workdir=${WORKDIR} \
${DATA_FLAGS} ${EXTRA_FLAGS} > ${LOG} 2>&1 & echo \$! > ${PID_FILE}"
tpu_ssh all "${cmd}"
echo "launched on all workers of ${TPU_NAME}; streaming worker 0 (Ctrl-C stops streaming only)"
bash "$(dirname "$0")/stream_logs.sh"
