"""How often the per-class paired tests call two equally good models different (a true null).

    python bench/calibration.py [--records=60] [--classes=10] [--trials=400] [--positives=3,5,10,20]

Two models of independent random scores, labels independent of both (each class's AUROC is 0.5
for both models): every "A better"/"B better" is a false positive. For each number of positives
per class, prints the share of per-class DeLong tests (paired.delong) with p < 0.05, and the
share of comparisons in which Holm's correction over the classes (paired.holm) still names a
class at alpha 0.05: the family-wise error a valid test keeps at 5%. This is why a class needs
paired.VERDICT_MIN_PER_CLASS positives and negatives for a verdict (docs/evaluation.md).
"""
from __future__ import annotations

import argparse

import numpy as np

from crema_jax.evaluate import paired


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--positives", default="3,5,10,20")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"independent random scores, {args.records} records, {args.classes} classes, "
          f"{args.trials} comparisons, alpha 0.05")
    print(f"{'positives':>9}  {'per-class tests p < 0.05':>24}  "
          f"{'comparisons naming a class (Holm)':>34}")
    for n_pos in (int(v) for v in args.positives.split(",")):
        y = np.zeros(args.records)
        y[:n_pos] = 1
        rejected, named = 0, 0
        for _ in range(args.trials):
            p = [paired.delong(y, rng.normal(size=args.records), rng.normal(size=args.records))["p"]
                 for _ in range(args.classes)]
            p = np.asarray([1.0 if v is None else v for v in p])
            rejected += int(np.sum(p < 0.05))
            named += bool(np.any(np.asarray(paired.holm(p)) < 0.05))
        print(f"{n_pos:>9}  {rejected / (args.trials * args.classes):>23.1%}  "
              f"{named / args.trials:>33.1%}")


if __name__ == "__main__":
    main()
