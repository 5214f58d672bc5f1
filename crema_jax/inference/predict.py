"""ECGFounder's 150 label probabilities for ECGs (`crema-jax predict`).

Sigmoid per label (multi-label) of the Net1D logits, computed through `embed` with logits: the
backbone's data path is ECGFounder's own (inference/backbones.py Net1dRunner: 500 Hz, its
preprocessing, one centred 10 s crop of longer records, zero-padded shorter ones). The 1-lead
model reads lead I.
"""
from __future__ import annotations

import csv
import hashlib
import os

import numpy as np

from crema_jax.inference import backbones, embed

LABELS_FILE = os.path.join(os.path.dirname(__file__), "ecgfounder_labels.txt")
LABELS_SHA256 = "7c087a0d383c7ea9ae9b818ad00a551b029334edfa5f1fbb5036bfbaa0df0c39"


def label_names() -> list[str]:
    """ECGFounder's 150 labels in output order (checked against the published SHA-256)."""
    with open(LABELS_FILE, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != LABELS_SHA256:
        raise ValueError(f"{LABELS_FILE}: SHA-256 differs from ECGFounder's label file")
    return data.decode("utf-8").splitlines()


def check_backbone(backbone) -> None:
    if not backbone.family.predicts_labels:
        raise ValueError("predict --model=ecgfounder needs a Net1D checkpoint (import one with "
                         "`crema-jax import-torch --format=ecgfounder`); this one holds a "
                         f"{backbone.config.model.name!r} model")
    classes = len(label_names())
    if backbone.num_classes != classes:
        raise ValueError(f"the checkpoint has {backbone.num_classes} outputs; ECGFounder's label "
                         f"file has {classes}")


def predict_probabilities(backbone, *, records=None, array=None, fs=None, batch_size: int = 16,
                          preset: str | None = None, derive_limb_leads: bool = False,
                          keeper=None, progress: str = "") -> dict:
    """embed.embed's dict with "probs" (N, 150) float64: the sigmoid of each label's logit
    (`keeper`, `progress`: embed.embed's)."""
    check_backbone(backbone)
    out = embed.embed(backbone, records=records, array=array, fs=fs, logits=True,
                      batch_size=batch_size, preset=preset, derive_limb_leads=derive_limb_leads,
                      keeper=keeper, progress=progress)
    out["probs"] = backbones.probabilities(out["outputs"], "multilabel")
    return out


def row_repairs(out: dict) -> list[str]:
    """Each output row's record's repairs in words (embed's "repairs"; "" for none)."""
    words = out.get("repairs")
    return [words[int(r)] if words else "" for r in out["record"]]


def csv_writer(ids, probs: np.ndarray, labels, repairs=None, paths=None):
    """write(tmp) for files.write_atomic(_group): the probabilities as CSV, a row per record:
    "record", its id (as embed.one_line_name writes it: any file name, valid UTF-8), "path",
    the record's absolute path (the same file in every run, where the id of a record depends on
    the others given: "E1" alone, "2023-01/E1" beside another E1; "" when not given), the
    labels' probabilities, then "repairs": what reading repaired in it ("" for none;
    reading/repairs.py's words)."""
    repairs = [""] * len(ids) if repairs is None else repairs
    paths = [""] * len(ids) if paths is None else [os.path.abspath(p) for p in paths]

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["record", "path"] + list(labels) + ["repairs"])
            for rid, path, row, repaired in zip(ids, paths, probs, repairs):
                writer.writerow([embed.one_line_name(rid), embed.one_line_name(path)]
                                + [f"{p:.6f}" for p in row] + [repaired])
    return write


def format_top(ids, probs: np.ndarray, labels, top: int, repairs=None) -> str:
    """Each record's `top` labels, under a line naming it (embed.one_line_name; and what
    reading repaired in it or found missing: "input: ..."); "" for top=0 (no line at all: it
    had printed a bare "NAME:" line per record)."""
    if top <= 0:
        return ""
    lines = []
    for i, (rid, row) in enumerate(zip(ids, probs)):
        repaired = repairs[i] if repairs is not None else ""
        lines.append(f"{embed.one_line_name(rid)}:" + (f" (input: {repaired})" if repaired
                                                        else ""))
        for c in np.argsort(-row, kind="stable")[:top]:
            lines.append(f"  {row[c]:.3f}  {labels[c]}")
    return "\n".join(lines)
