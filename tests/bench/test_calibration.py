"""bench/calibration.py's shares, recomputed with the tests' own DeLong (DeLong et al. 1988,
written out in tests/evaluate/test_paired.py) and Holm by hand, over the same draws."""
import pathlib
import subprocess
import sys

import numpy as np

from tests.evaluate.test_benchmark import holm_by_hand
from tests.evaluate.test_paired import reference_delong

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_the_calibration_table_is_the_reference_tests_share_of_false_positives():
    records, classes, trials, positives = 30, 4, 25, (3, 10)
    out = subprocess.run([sys.executable, str(REPO / "bench" / "calibration.py"),
                          f"--records={records}", f"--classes={classes}", f"--trials={trials}",
                          f"--positives={','.join(map(str, positives))}"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    rng = np.random.default_rng(0)
    for n_pos, row in zip(positives, rows):
        y = np.zeros(records)
        y[:n_pos] = 1
        rejected = named = 0
        for _ in range(trials):
            p = [reference_delong(y, rng.normal(size=records), rng.normal(size=records))[3]
                 for _ in range(classes)]
            rejected += sum(v < 0.05 for v in p)
            named += any(v < 0.05 for v in holm_by_hand(p))
        assert row == [str(n_pos), f"{100 * rejected / (trials * classes):.1f}%",
                       f"{100 * named / trials:.1f}%"]
    assert len(rows) == len(positives)
