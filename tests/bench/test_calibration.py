"""bench/calibration.py's shares, recomputed with the tests' own DeLong (DeLong et al. 1988,
written out in tests/evaluate/test_paired.py), the tests' own permutation test
(tests/evaluate/test_permutation.py) and Holm by hand, over the same draws."""
import pathlib
import subprocess
import sys

import numpy as np

from tests.evaluate.test_benchmark import holm_by_hand
from tests.evaluate.test_paired import reference_delong
from tests.evaluate.test_permutation import reference_exchange_p

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_the_calibration_table_is_the_reference_tests_share_of_false_positives():
    records, classes, trials, positives, permutations = 30, 4, 25, (3, 10), 499
    out = subprocess.run([sys.executable, str(REPO / "bench" / "calibration.py"),
                          f"--records={records}", f"--classes={classes}", f"--trials={trials}",
                          f"--positives={','.join(map(str, positives))}",
                          f"--permutations={permutations}"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    rng = np.random.default_rng(0)
    for n_pos, row in zip(positives, rows):
        y = np.zeros(records)
        y[:n_pos] = 1
        rejected, named = {"delong": 0, "exchange": 0}, {"delong": 0, "exchange": 0}
        for trial in range(trials):
            p = {"delong": [], "exchange": []}
            for c in range(classes):
                a, b = rng.normal(size=records), rng.normal(size=records)
                p["delong"].append(reference_delong(y, a, b)[3])
                p["exchange"].append(reference_exchange_p(
                    y, a, b, seed=[0, trial, c], n_permutations=permutations)[1])
            for key, values in p.items():
                rejected[key] += sum(v < 0.05 for v in values)
                named[key] += any(v < 0.05 for v in holm_by_hand(values))
        share = {k: f"{100 * rejected[k] / (trials * classes):.1f}%" for k in rejected}
        holm = {k: f"{100 * named[k] / trials:.1f}%" for k in named}
        # Fewer than 100 positives: the class test is the permutation test.
        assert row == [str(n_pos), share["delong"], holm["delong"], share["exchange"],
                       holm["exchange"], "permutation"]
    assert len(rows) == len(positives)
