"""Shared by the evaluation tests of this session: a checkpoint written by `crema-jax pretrain`
(2 steps of configs/crema_tiny.py), and a manifest giving the 50 CinC records patients."""
import collections
import csv
import hashlib
import os
import pathlib
import subprocess
import sys

import pytest

from tests import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def pretrained_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pretrain")
    env = dict(os.environ)
    env.update(XLA_FLAGS=xla_flags.cpu_devices(1), JAX_NUM_CPU_DEVICES="1",
               JAX_PLATFORMS="cpu")
    args = [sys.executable, "-m", "crema_jax.main", "pretrain",
            f"--config={REPO / 'configs' / 'crema_tiny.py'}", f"--workdir={workdir}",
            "--config.data.synthetic_records=16", "--config.train.num_steps=2",
            "--config.checkpoint.every_steps=2", "--config.optim.warmup_steps=1",
            "--config.train.tensorboard=False", "--config.mesh.data=-1"]
    done = subprocess.run(args, env=env, cwd=str(REPO), capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"crema-jax pretrain failed:\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    assert (workdir / "checkpoints" / "2").is_dir(), list(workdir.iterdir())
    return workdir


def header_labels(header: pathlib.Path) -> set:
    """The SNOMED codes of a WFDB header's `# Dx:` line, read by hand."""
    for line in header.read_text().splitlines():
        if line.startswith("# Dx:"):
            return {code.strip() for code in line[5:].split(",")}
    return set()


@pytest.fixture(scope="session")
def manifest(cinc_sample_dir, tmp_path_factory):
    """The CinC records with their header labels; consecutive records of a source share a
    patient."""
    path = tmp_path_factory.mktemp("manifest") / "manifest.csv"
    heads = sorted(cinc_sample_dir.glob("*.hea"))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "patient_id"])
        for i, head in enumerate(heads):
            writer.writerow([str(head.with_suffix("")),
                             ";".join(sorted(header_labels(head))),
                             f"P{i // 2}"])
    patients = {head.stem: f"P{i // 2}" for i, head in enumerate(heads)}
    return path, patients


def evaluated_ids(root: pathlib.Path, min_positives: int) -> list:
    """The record ids a K-fold evaluation of the CinC records keeps, found by hand: each
    signal once (the first id, in name order, of byte-identical .mat files: the sample holds
    such a pair), then the records with a class that has >= min_positives positives among
    them (with folds, classes count all records' positives)."""
    first = {}
    for head in sorted(root.glob("*.hea")):
        digest = hashlib.sha256(head.with_suffix(".mat").read_bytes()).hexdigest()
        first.setdefault(digest, head)
    labels = {head.stem: header_labels(head) for head in first.values()}
    counts = collections.Counter(code for codes in labels.values() for code in codes)
    return sorted(r for r, codes in labels.items()
                  if any(counts[c] >= min_positives for c in codes))
