#!/usr/bin/env bash
# Delete the slice (billing stops). Checkpoints in the gs:// WORKDIR stay.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require PROJECT "the GCP project"
gcloud compute tpus tpu-vm delete "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" --quiet
