#!/usr/bin/env bash
# Create a TPU VM pod slice (v4 / v5p / v6e), e.g.
#   ACCELERATOR=v4-32 ZONE=us-central2-b TPU_NAME=crema-pod bash tpu_scripts/create_pod.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
require PROJECT "the GCP project (gcloud config set project ...)"

extra=()
if [[ "${PREEMPTIBLE}" == "1" ]]; then
  extra+=(--spot)
fi

gcloud compute tpus tpu-vm create "${TPU_NAME}" \
  --project="${PROJECT}" --zone="${ZONE}" \
  --accelerator-type="${ACCELERATOR}" --version="${RUNTIME_VERSION}" "${extra[@]}"

gcloud compute tpus tpu-vm describe "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
  --format="value(state,acceleratorType)"
