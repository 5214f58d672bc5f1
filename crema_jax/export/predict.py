"""`crema-jax predict --model=ecgfounder --checkpoint=DIR RECORD... [--out=probs.csv] [--top=5]`.

ECGFounder's 150 label probabilities (sigmoid per label: multi-label) for WFDB records, with the
preprocessing its authors prescribe: NaN -> 0; 50 Hz notch (Q 30) and order-4 Butterworth
band-pass 0.67-40 Hz, both zero-phase; running median of int(0.4 fs)+1 samples subtracted per
lead; one z-score over the whole array (x - mean) / (std + 1e-8); 500 Hz, 5000 samples (longer
records centre-cropped, shorter zero-padded). The 1-lead model reads lead I.
Records: paths, globs or folders (each argument may also be comma-separated).
"""
from __future__ import annotations

import csv
import hashlib
import os

import numpy as np

from crema_jax.export import cli, embed, inputs, model_io

LABELS_FILE = os.path.join(os.path.dirname(__file__), "ecgfounder_labels.txt")
LABELS_SHA256 = "7c087a0d383c7ea9ae9b818ad00a551b029334edfa5f1fbb5036bfbaa0df0c39"

cli.enum("model", "ecgfounder", ["ecgfounder"], "predict: the label model")
cli.string("checkpoint", None, "workdir, checkpoints dir or step dir to read")
cli.string("out", None, "output: predict: CSV of all label probabilities per record")
cli.integer("top", 5, "predict: labels printed per record")
cli.integer("batch_size", 16, "ECGs per forward pass")


def label_names() -> list[str]:
    """ECGFounder's 150 labels in output order (checked against the published SHA-256)."""
    with open(LABELS_FILE, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != LABELS_SHA256:
        raise ValueError(f"{LABELS_FILE}: SHA-256 differs from ECGFounder's label file")
    return data.decode("utf-8").splitlines()


def predict_probabilities(config, params, signals: list[np.ndarray], *, batch_size=16
                          ) -> np.ndarray:
    """(N, 150) probabilities for (12, T) signals at the model's rate (500 Hz)."""
    if config.model.get("name") != "net1d":
        raise ValueError("predict --model=ecgfounder needs a Net1D checkpoint (import one with "
                         "`crema-jax import-torch --format=ecgfounder`); this one is "
                         f"{config.model.get('name')!r}")
    logits = embed.embed(config, params, signals, fs=embed.model_rate(config), logits=True,
                         batch_size=batch_size)
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def write_csv(path: str, ids, probs: np.ndarray, labels) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["record"] + list(labels))
        for rid, row in zip(ids, probs):
            writer.writerow([rid] + [f"{p:.6f}" for p in row])


def format_top(ids, probs: np.ndarray, labels, top: int) -> str:
    lines = []
    for rid, row in zip(ids, probs):
        lines.append(f"{rid}:")
        for c in np.argsort(-row, kind="stable")[:top]:
            lines.append(f"  {row[c]:.3f}  {labels[c]}")
    return "\n".join(lines)


def main(argv):
    cli.quiet_logs()
    if len(argv) < 2 or not cli.value("checkpoint"):
        raise SystemExit("usage: crema-jax predict --model=ecgfounder --checkpoint=DIR RECORD... "
                         "[--out=probs.csv] [--top=5]")
    labels = label_names()
    params, config, _ = model_io.load_checkpoint(cli.value("checkpoint"))
    if int(config.model.get("num_classes", 0)) != len(labels):
        raise SystemExit(f"predict: the checkpoint has {config.model.get('num_classes')} outputs;"
                         f" ECGFounder's label file has {len(labels)}")
    paths = inputs.expand_records(",".join(argv[1:]))
    signals, _, ids = inputs.read_records(paths, embed.model_rate(config))
    probs = predict_probabilities(config, params, signals, batch_size=cli.value("batch_size"))
    print(format_top(ids, probs, labels, cli.value("top")))
    if cli.value("out"):
        write_csv(cli.value("out"), ids, probs, labels)
        print(f"wrote {cli.value('out')} ({len(ids)} records x {len(labels)} labels)")
