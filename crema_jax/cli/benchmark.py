"""`crema-jax benchmark`: many models x many tasks under one protocol, in one resumable command.

    crema-jax benchmark --models=crema=/runs/crema_base,stmem=/ckpt/stmem,founder=/ckpt/ecgfounder \
        --tasks=configs/benchmarks/ptbxl.py --roots=ptbxl=/data/ptbxl --workdir=/runs/bench
    crema-jax benchmark --models=tiny=/runs/demo --tasks=configs/benchmarks/bundled_sample.py \
        --workdir=/tmp/bench

--models: NAME=CHECKPOINT pairs; CHECKPOINT a checkpoint (ours, or imported ST-MEM/ECGFounder),
`random` (a SiT of --model_size) or `random:sit` / `random:net1d`. The random init of every
architecture in the table is added as a row (`random:FAMILY`, e.g. random:sit) when none is
given. Every model's cells are filed under its weights (a random init's: its architecture and
seed), whatever the order or the names of --models; one model given twice is said to be one.
--tasks: a task file (configs/benchmarks/*.py) naming the datasets (layout, root, classes, split
rule), the tasks (lead sets, label fractions, cross-domain source pairs) and the protocols
(probe: linear head; mlp: frozen encoder + a small MLP head; finetune: SiT models only).

Every model sees the same records, splits and label fractions, each through its own data path.
Frozen features are extracted once per model x dataset and cached in --workdir; every finished
cell's predictions are saved, so a killed benchmark rerun with the same flags computes only the
missing cells. Writes leaderboard.json, leaderboard.md and leaderboard.png: paired tests (a
permutation test per class, paired bootstrap of the macro AUROC over patients) of every model
against the top one (highest macro AUROC) and against its random init, Holm-corrected across
the table; per column the best models, in bold: the top one and every model not
distinguishable from it; per class each model's AUROC and its test against the top one. Prints
a line per column as the leaderboard's tests run, then the ranking table and each column's
verdict, and where leaderboard.md is; a rerun over the same cells reuses the tests (cached in
--workdir).
"""
import pathlib

from crema_jax.cli import command, evaluation_flags

COMMAND = command.Command("benchmark", __doc__,
                          usage="--models=NAME=CHECKPOINT,... --tasks=FILE.py --workdir=DIR")
COMMAND.list("models", None, "NAME=CHECKPOINT pairs (CHECKPOINT: a checkpoint folder, random "
             "or random:FAMILY).", required=True)
COMMAND.string("tasks", None, "The task file (a Python config, configs/benchmarks/*.py).",
               required=True)
COMMAND.string("workdir", None, "Output folder, a local path: cells/, features/, "
               "leaderboard.json/.md/.png; rerunning into it resumes.", required=True)
COMMAND.multi_string("roots", [], "DATASET=FOLDER (repeatable): where a dataset of the task "
                     "file lives, replacing its root.")
COMMAND.string("model_size", "tiny", "SiT size of a `random` model (tiny/small/base/large).")


@COMMAND.main
def main(args) -> None:
    # run time: --help needs no JAX
    from crema_jax.evaluate import benchmark, benchmark_models, leaderboard_markdown

    if not args.models:  # a usage error (exit 2), as a missing required flag is
        raise command.FlagValueError("--models: expected NAME=CHECKPOINT pairs")
    evaluation_flags.check_model_size(args.model_size)
    try:  # a usage error (exit 2), before the task file and the models are read
        benchmark_models.parse_models(list(args.models))
    except ValueError as err:
        raise command.FlagValueError(str(err)) from None
    roots = {k: str(v) for k, v in command.parse_key_values(args.roots, flag="roots").items()}
    # The task file is loaded once, first (benchmark_tasks.load_suite: a load error names --tasks).
    board = benchmark.run_benchmark(list(args.models), args.tasks, args.workdir, roots=roots,
                                    model_size=args.model_size)
    counts = board["counts"]
    print("\n".join(leaderboard_markdown.summary(board)))
    print(f"cells: {counts['cells_computed']} computed, {counts['cells_reused']} reused, "
          f"{counts['cells_not_applicable']} not applicable; feature extractions: "
          f"{counts['feature_extractions']} ({counts['features_reused']} reused); leaderboard "
          f"statistics: {counts['statistics_computed']} computed, "
          f"{counts['statistics_reused']} reused; {board['seconds']} s")
    workdir = pathlib.Path(args.workdir)
    print(f"the whole leaderboard (per-class results, every paired test): "
          f"{workdir / 'leaderboard.md'}; figures: {workdir / 'leaderboard.json'}, "
          f"{workdir / 'leaderboard.png'}")
