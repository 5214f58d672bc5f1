#!/usr/bin/env bash
# Install crema_jax (with JAX for TPU) on EVERY worker of the slice.
#   REPO_URL=https://github.com/ORG/crema_jax.git bash tpu_scripts/install.sh   # clone on workers
#   bash tpu_scripts/install.sh                                                # copy this checkout
set -euo pipefail
source "$(dirname "$0")/common.sh"
require PROJECT "the GCP project"

if [[ -n "${REPO_URL}" ]]; then
  fetch="rm -rf ${REMOTE_DIR} && git clone -q ${REPO_URL} ${REMOTE_DIR} && git -C ${REMOTE_DIR} checkout -q ${REPO_REF}"
else
  archive="$(mktemp -d)/crema_jax.tar.gz"
  git -C "$(dirname "$0")/.." archive --format=tar.gz -o "${archive}" HEAD
  gcloud compute tpus tpu-vm scp "${archive}" "${TPU_NAME}:crema_jax.tar.gz" \
    --project="${PROJECT}" --zone="${ZONE}" --worker=all
  fetch="rm -rf ${REMOTE_DIR} && mkdir -p ${REMOTE_DIR} && tar -xzf crema_jax.tar.gz -C ${REMOTE_DIR}"
fi

# One command string, run by each worker's shell.
tpu_ssh all "set -euo pipefail; ${fetch}
python3 -m pip install -q --upgrade pip
python3 -m pip install -q 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
python3 -m pip install -q -e ${REMOTE_DIR}
python3 -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'"
