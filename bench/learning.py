"""Does pretraining learn features? CR-MAE vs MAE only vs contrastive only vs random init, for one
fixed CPU budget, judged by linear probes on frozen features:

    python bench/learning.py [--steps=400] [--records=384] [--eval_every=100] \
        [--out=/tmp/crema_learning]

- Pretraining data: `--records` synthetic 12-lead ECGs (data/synthetic.py) whose generating
  factors vary: rhythm (AF), rate (tachy-/bradycardia), electrical axis (left/right deviation),
  QRS width; written as WFDB once, read like any dataset.
- Probes (the `fewshot_probe` evaluator, every --eval_every steps and at the end): (1) those
  factors as labels on 256 OTHER synthetic records, (2) the bundled real CinC 2021 records' SNOMED
  labels; each re-split 50/20/30 (train/val/test). Macro AUROC on the test part.
- Arms: configs/demo.py's model and recipe with loss crema (CR-MAE), mae (lambda = 0),
  infonce (contrastive only), and the same model at random init (evaluated, never trained).

Prints a table (the last probe of each arm; the best along the curve in brackets) and writes
learning.png (AUROC vs step, one panel per probe set) and learning.json. Float32 on CPU.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crema_jax import config as config_lib  # noqa: E402

TITLES = {"synthetic": "synthetic factors (rhythm, rate, axis, QRS width)",
          "real": "bundled real records (SNOMED labels)"}
ARMS = {"CR-MAE": "crema", "MAE only": "mae", "contrastive only": "infonce"}
PROBES = ("synthetic", "real")  # factors of synthetic ECGs; the bundled records' SNOMED labels


def demo_config():
    return config_lib.load_config_file(REPO / "configs" / "demo.py")


def arm_config(loss: str, *, pretrain_root: str, steps: int, eval_every: int):
    config = demo_config()
    config.loss.name = loss
    config.data.root = pretrain_root
    config.data.split = ""            # every pretraining record trains
    config.data.keep_in_memory = True
    config.train.num_steps = steps
    config.train.reconstruction_png = False
    config.train.tensorboard = False
    config.train.log_every_steps = max(steps // 4, 1)
    config.checkpoint.every_steps = steps
    config.evals.names = ("fewshot_probe",)
    config.evals.every_steps = eval_every
    return config


def probe_builders(synthetic_root: str):
    """evaluators(config, setup, predict_fns): the few-shot probe on each probe set (metric keys
    apart)."""
    from crema_jax.data.index import dataset_index
    from crema_jax.evaluate import evaluators

    def build(config, setup, predict_fns):
        out = []
        roots = {PROBES[0]: synthetic_root, PROBES[1]: str(dataset_index.sample_data_dir())}
        for key, root in roots.items():
            c = config.copy_and_resolve_references()
            c.evals.fewshot_probe.root = root
            c.evals.fewshot_probe.layout = "wfdb_folder"
            c.evals.fewshot_probe.layout_options = {}
            c.evals.fewshot_probe.split_fractions = (0.5, 0.2, 0.3)
            c.evals.fewshot_probe.min_positives = 2
            out.append(evaluators.FewShotProbe(c, setup.mesh, predict_fns, key=key))
        return out

    return build


def random_init_arm(config, build_probes) -> dict:
    """The untrained model's probes (the baseline every arm must beat)."""
    import jax
    from crema_jax.train import trainer

    setup = trainer.build(config, devices=jax.devices()[:1])
    state = trainer.init_state(setup, jax.random.key(int(config.train.seed)))
    probes = build_probes(config, setup, trainer.predict_fns(setup))
    return {p.key: p.run(state)[f"eval/{p.key}_macro_auroc"] for p in probes}


def train_arm(config, workdir, build_probes) -> dict:
    """{probe set: {step: AUROC}} along one pretraining run, and its first and last loss."""
    import jax
    from crema_jax.train import trainer

    result = trainer.train(config, workdir, devices=jax.devices()[:1], evaluators=build_probes)
    curves = {p: {step: row[f"eval/{p}_macro_auroc"] for step, row in result["evals"].items()}
              for p in PROBES}
    losses = result["losses"]
    return {"curves": curves, "first_loss": losses[min(losses)], "last_loss": losses[max(losses)]}


def plot(results: dict, random: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PROBES), figsize=(11, 3.8))
    for ax, probe in zip(axes, PROBES):
        for arm, res in results.items():
            steps = sorted(res["curves"][probe])
            ax.plot(steps, [res["curves"][probe][s] for s in steps], marker="o", label=arm)
        ax.axhline(random[probe], color="grey", ls="--", label="random init")
        ax.set_title(f"linear probe: {TITLES[probe]}", fontsize=10)
        ax.set_xlabel("pretraining step")
        ax.set_ylabel("test macro AUROC")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="pretraining steps per arm")
    parser.add_argument("--records", type=int, default=384, help="synthetic pretraining ECGs")
    parser.add_argument("--eval_every", type=int, default=100, help="probe every N steps")
    parser.add_argument("--out", default="/tmp/crema_learning", help="output folder")
    args = parser.parse_args(argv)

    from crema_jax.data import synthetic

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        pretrain_root, probe_root = pathlib.Path(tmp) / "pretrain", pathlib.Path(tmp) / "probe"
        synthetic.write_synthetic_wfdb(pretrain_root, args.records, seed=0, factors=True)
        synthetic.write_synthetic_wfdb(probe_root, 256, seed=10**5, factors=True)
        build = probe_builders(str(probe_root))
        configs = {arm: arm_config(loss, pretrain_root=str(pretrain_root), steps=args.steps,
                                   eval_every=args.eval_every) for arm, loss in ARMS.items()}
        random = random_init_arm(configs["CR-MAE"], build)
        results = {}
        for arm, config in configs.items():
            t0 = time.time()
            results[arm] = train_arm(config, pathlib.Path(tmp) / arm.replace(" ", "_"), build)
            results[arm]["seconds"] = round(time.time() - t0, 1)
    plot(results, random, out / "learning.png")
    with open(out / "learning.json", "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "random_init": random, "arms": results}, f, indent=1,
                  default=str)
    print(f"\n{args.steps} steps per arm, {args.records} synthetic pretraining ECGs "
          f"(float32, CPU); test macro AUROC of a linear probe, last (best along the curve)\n")
    print("| arm | " + " | ".join(PROBES) + " | loss first -> last | seconds |")
    print("|---|" + "---|" * (len(PROBES) + 2))
    print("| random init | " + " | ".join(f"{random[p]:.3f}" for p in PROBES) + " | - | - |")
    for arm, res in results.items():
        cells = []
        for p in PROBES:
            curve = res["curves"][p]
            cells.append(f"{curve[max(curve)]:.3f} ({max(curve.values()):.3f})")
        print(f"| {arm} | " + " | ".join(cells)
              + f" | {res['first_loss']:.3f} -> {res['last_loss']:.3f} | {res['seconds']} |")
    print(f"\nwrote {out / 'learning.png'} and learning.json ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
