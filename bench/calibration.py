"""How often the per-class paired tests call two equally good models different (a true null).

    python bench/calibration.py [--records=60] [--classes=10] [--trials=400]
                                [--positives=3,5,10,20,30] [--permutations=9999]

Two models of independent random scores, labels independent of both (each class's AUROC is 0.5
for both models): every "A better"/"B better" is a false positive. For each number of positives
per class, prints the share of per-class tests with p < 0.05, and the share of comparisons in
which Holm's correction over the classes (holm.holm) still names a class at alpha 0.05: the
family-wise error a valid test keeps at 5%. Two tests side by side: DeLong's normal p
(paired.delong) and the test compare and benchmark decide on (paired.class_test: the paired
permutation test below paired.PERMUTATION_BELOW positives or negatives, DeLong's above;
comparison t's class c drawn from seed [seed, t, c]). docs/evaluation.md says why.
"""
from __future__ import annotations

import argparse

import numpy as np

from crema_jax.evaluate import holm, paired


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--positives", default="3,5,10,20,30")
    parser.add_argument("--permutations", type=int, default=9999)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"independent random scores, {args.records} records, {args.classes} classes, "
          f"{args.trials} comparisons, alpha 0.05; share of tests with p < 0.05 | share of "
          "comparisons naming a class after Holm")
    print(f"{'positives':>9}  {'DeLong':>7} {'Holm':>6}  {'class test':>10} {'Holm':>6}  test")
    for n_pos in (int(v) for v in args.positives.split(",")):
        y = np.zeros(args.records)
        y[:n_pos] = 1
        counts = {"delong": [0, 0], "class": [0, 0]}
        test = None
        for trial in range(args.trials):
            p = {"delong": [], "class": []}
            for c in range(args.classes):
                a, b = rng.normal(size=args.records), rng.normal(size=args.records)
                entry = paired.class_test(y, a, b, seed=[args.seed, trial, c],
                                          n_permutations=args.permutations)
                test = entry["test"]
                p["delong"].append(entry.get("p_delong", entry["p"]))
                p["class"].append(entry["p"])
            for key, values in p.items():
                values = np.asarray([1.0 if v is None else v for v in values])
                counts[key][0] += int(np.sum(values < 0.05))
                counts[key][1] += bool(np.any(np.asarray(holm.holm(values)) < 0.05))
        (d, dh), (c, ch) = ((counts[k][0] / (args.trials * args.classes),
                             counts[k][1] / args.trials) for k in ("delong", "class"))
        print(f"{n_pos:>9}  {d:>7.1%} {dh:>6.1%}  {c:>10.1%} {ch:>6.1%}  {test}")


if __name__ == "__main__":
    main()
