#!/usr/bin/env bash
# The accelerator table on a machine with an NVIDIA GPU, in one go: make sure what the rows import
# is there, then bench/accelerator.py (crema_jax's bf16 train step of the small and base SiT at
# global batch 256, the same step in PyTorch with AMP + torch.compile, Net1D inference at batch
# 256 in both), each row in its own process under its own cap, one table within 8 minutes.
#
#   bash bench/accelerator.sh [--out=PATH] [--budget=SECONDS] [--offline] [accelerator.py flags]
#   bash bench/accelerator.sh --dry     # CPU, tiny sizes, every step once: ~1 min on 2 cores
#
# --offline: do not ask an index (a machine without network: saves the index's time-out).
# accelerator.py's flags: --tiny (tiny sizes on whatever device there is), --models=small,base,
# --batch=256, --net1d_batch=256, --samples=5000, --steps=20, --budget=480, --loss=crema.
#
# The table goes to stdout, to --out=PATH and, when $OUT is set, to $OUT/accelerator.md (every
# row's output to $OUT/accelerator.md.log). `python3`, or $PYTHON, runs everything; the repo is
# put on PYTHONPATH, so crema_jax need not be installed.
#
# Packages. The rows import jax (with a GPU backend), flax, optax, orbax-checkpoint,
# ml_collections, numpy, absl-py, etils and torch; no input pipeline (Grain, ArrayRecord, wfdb),
# tensorboardX or matplotlib: the train rows feed a synthetic batch of the batch contract.
# - jax has no GPU backend, or a package is missing, and pip reaches an index (not --dry):
#   `pip install -e ".[cuda]"` (--dry: `pip install -e .`). torch is never installed here.
# - something is missing and no index answers (or --offline): the wheels in .whl/ (git-ignored)
#   are installed into /tmp/crema_site, which goes on PYTHONPATH.
# An image with Python 3.12, jax[cuda13], flax, optax, orbax-checkpoint and torch but no index
# needs one wheel in .whl/ (77 kB; it needs absl-py and PyYAML, which such images have):
#   ml_collections-1.1.0-py3-none-any.whl
# fetched, where pip reaches an index, from the repository root with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl ml_collections==1.1.0
# On the bench path crema_jax imports ml_collections (config), orbax-checkpoint (train/trainer.py
# imports crema_jax.runtime.checkpoint at the top) and nothing of the input pipeline.
set -uo pipefail

START=$(date +%s)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
PY=${PYTHON:-python3}
SITE=/tmp/crema_site
DRY=0
OFFLINE=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --dry) DRY=1; ARGS+=("$arg") ;;
    --offline) OFFLINE=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    *) ARGS+=("$arg") ;;
  esac
done
if [ -n "${OUT:-}" ]; then
  ARGS=("--out=$OUT/accelerator.md" "${ARGS[@]}")  # first: the row log goes beside it
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "accelerator: $*"; }

# Prints "missing: MODULES", "gpu: yes|no" and one line of versions. JAX's GPU client is made
# (not for --dry) before torch is imported, as in the rows, and without taking the GPU's memory.
probe() {
  XLA_PYTHON_CLIENT_PREALLOCATE=false "$PY" - "$DRY" <<'EOF'
import importlib, sys
missing, versions, gpu = [], [], "no"


def check(name):
    try:
        module = importlib.import_module(name)
        versions.append(f"{name} {getattr(module, '__version__', '?')}")
    except Exception:  # noqa: BLE001 - any import failure is "missing"
        missing.append(name)


for name in ("numpy", "jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "ml_collections",
             "absl", "etils"):
    check(name)
if sys.argv[1] == "0" and "jax" not in missing:
    import jax
    try:
        kind = jax.devices("gpu")[0].device_kind
        gpu = "yes"
        versions.append(f"JAX GPU: {kind}")
    except RuntimeError:
        pass
check("torch")
if "torch" not in missing:
    import torch
    versions.append(f"torch CUDA: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
                    else "torch CUDA: none")
print("missing:", " ".join(missing))
print("gpu:", gpu)
print("versions:", f"Python {sys.version.split()[0]} ({sys.executable});", ", ".join(versions))
EOF
}

index_answers() {
  [ "$OFFLINE" = 0 ] && timeout 30 "$PY" -m pip index versions --retries 0 --timeout 5 \
    ml_collections >/dev/null 2>&1
}

report=$(probe)
missing=$(sed -n 's/^missing: *//p' <<<"$report" | sed 's/\btorch\b//; s/^ *//; s/ *$//')
gpu=$(sed -n 's/^gpu: //p' <<<"$report")
say "$(sed -n 's/^versions: //p' <<<"$report")"
[ -n "$missing" ] && say "missing: $missing"
grep -q '^missing:.*\btorch\b' <<<"$report" && say "torch is missing: the PyTorch rows will fail"

if [ "$DRY" = 1 ]; then
  say "dry run: CPU only, tiny sizes; no GPU packages are installed"
  [ -n "$missing" ] && want="." || want=""
elif [ "$gpu" = no ]; then
  say "jax has no GPU backend"
  want=".[cuda]"
else
  [ -n "$missing" ] && want=".[cuda]" || want=""
fi

if [ -z "$want" ]; then
  say "using what is installed"
elif index_answers; then
  say "pip reaches an index: pip install -e \"$want\""
  "$PY" -m pip install -q -e "$want" || say "pip install -e \"$want\" failed"
elif compgen -G ".whl/*.whl" >/dev/null; then
  say "no index answers: installing the carried wheels (.whl/) into $SITE"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl; then
    export PYTHONPATH="$REPO:$SITE${PYTHONPATH#"$REPO"}"
  else
    say "installing .whl/ failed"
  fi
else
  say "no index answers and no wheels in .whl/: using what is installed"
fi
if [ -n "$want" ]; then
  report=$(probe)
  say "now: $(sed -n 's/^versions: //p' <<<"$report")"
  still=$(sed -n 's/^missing: *//p' <<<"$report")
  [ -n "$still" ] && say "still missing: $still (the rows that import them will fail)"
  [ "$DRY" = 0 ] && grep -q '^gpu: no' <<<"$report" && say "still no GPU backend: rows run on CPU"
fi

say "setup took $(( $(date +%s) - START )) s"
"$PY" "$REPO/bench/accelerator.py" --started="$START" "${ARGS[@]}"
