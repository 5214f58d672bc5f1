"""Evaluation outputs: report.json, a Markdown table (report.md), ROC and PCA plots.

The report is a plain dict built by probe/finetune; this module only renders it. Missing values
(classes that could not be scored, undefined CIs) are None in JSON and an em dash in Markdown.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from crema_jax import files
from crema_jax.evaluate import metrics

DASH = "\u2014"


def _fmt(value, digits: int = 3) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def _ci(ci: dict | None) -> str:
    if not ci or ci.get("low") is None:
        return DASH
    return f"[{ci['low']:.3f}, {ci['high']:.3f}]"


def write_json(report: dict, path) -> None:
    pathlib.Path(path).write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def display(report: dict, name: str) -> str:
    """'PAC (284470004)' when the report has a readable name for a class code."""
    readable = report.get("class_display", {}).get(name)
    return f"{readable} ({name})" if readable else name


def markdown(report: dict) -> str:
    """The report as Markdown tables: protocols, per-class figures, cross-domain drops."""
    lines = [f"# {report.get('title', 'Evaluation')}", ""]
    settings = report.get("settings", {})
    if settings:
        lines.append(", ".join(f"{k}: `{v}`" for k, v in settings.items()))
        lines.append("")
    runs = report.get("runs", [])
    if runs:
        lines += ["## Test results", "",
                  "| run | leads | label fraction | train records | test records | macro AUROC "
                  "| 95% CI | macro AUPRC | macro F1 | skipped classes |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for run in runs:
            test = run["test"]
            skipped = ", ".join(f"{display(report, s['class'])}: {s['reason'].replace('_', ' ')}"
                                for s in test["skipped"]) or DASH
            lines.append(
                f"| {run['name']} | {run['protocol']['leads']} | "
                f"{run['protocol']['label_fraction']:g} | {run['n_train']} | {test['n']} | "
                f"{_fmt(test['macro_auroc'])} | {_ci(test.get('ci'))} | "
                f"{_fmt(test['macro_auprc'])} | {_fmt(test['macro_f1'])} | {skipped} |")
        lines.append("")
        head = runs[0]
        lines += [f"## Per class ({head['name']})", "",
                  "| class | test positives | AUROC | AUPRC | F1 | threshold (val) |",
                  "|---|---|---|---|---|---|"]
        for name, e in head["test"]["per_class"].items():
            lines.append(f"| {display(report, name)} | {e['n_pos']}/{e['n_pos'] + e['n_neg']} "
                         f"| {_fmt(e['auroc'])} "
                         f"| {_fmt(e['auprc'])} | {_fmt(e['f1'])} | {_fmt(e['threshold'])} |")
        lines.append("")
    cross = report.get("cross_domain", [])
    if cross:
        lines += ["## Cross-domain (head trained on one source)", "",
                  "| train source | test source | in-domain AUROC | out-of-domain AUROC | drop "
                  "| common classes | out-of-domain macro AUROC (all scorable) |",
                  "|---|---|---|---|---|---|---|"]
        for entry in cross:
            for other, drop in entry["drop"].items():
                lines.append(
                    f"| {entry['train_source']} | {other} | {_fmt(drop['in_domain'])} | "
                    f"{_fmt(drop['out_of_domain'])} | {_fmt(drop['drop'])} | "
                    f"{len(drop['classes'])} | "
                    f"{_fmt(entry['out_of_domain'][other]['macro_auroc'])} |")
        lines.append("")
    return "\n".join(lines)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers or in CI
    import matplotlib.pyplot as plt
    return plt


def plot_roc(labels: np.ndarray, scores: np.ndarray, class_names, path, title: str) -> None:
    """One ROC curve per scorable class, AUROC in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    drawn = 0
    for c, name in enumerate(class_names):
        if metrics.class_status(labels[:, c]) is not None:
            continue
        fpr, tpr = metrics.roc_curve(labels[:, c], scores[:, c])
        # Straight segments between operating points: the area under them is the AUROC
        # (tied scores give a diagonal segment, as in sklearn's RocCurveDisplay).
        ax.plot(fpr, tpr, lw=1.5,
                label=f"{name} ({metrics.auroc(labels[:, c], scores[:, c]):.3f})")
        drawn += 1
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="true-positive rate",
           title=title)
    if drawn:
        ax.legend(fontsize=7, loc="lower right", title="class (AUROC)", title_fontsize=7)
    else:
        ax.text(0.5, 0.5, "no class has both positives and negatives", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First two principal components (numpy SVD of centred features) and their variance ratios;
    a component that does not exist (one record, one feature) is all zeros with ratio 0."""
    x = np.asarray(features, np.float64)
    x = x - x.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    var = s ** 2
    xy, ratio = np.zeros((len(x), 2)), np.zeros(2)
    k = min(2, len(var))
    xy[:, :k] = x @ vt[:k].T
    ratio[:k] = var[:k] / max(var.sum(), 1e-12)
    return xy, ratio


def primary_label(labels: np.ndarray, class_names) -> list[str]:
    """One colour group per record: its rarest positive class, or 'none'."""
    order = np.argsort(labels.sum(0), kind="stable")
    out = []
    for row in labels > 0.5:
        present = [c for c in order if row[c]]
        out.append(class_names[present[0]] if present else "none")
    return out


def plot_embeddings(features: np.ndarray, groups: dict, path, title: str) -> None:
    """PCA scatter of features, one panel per grouping (e.g. {"label": [...], "source": [...]})."""
    plt = _pyplot()
    xy, ratio = pca_2d(features)
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 5), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, (group_name, values) in zip(axes[0], groups.items()):
        names = sorted(set(values))
        for k, name in enumerate(names):
            sel = np.array([v == name for v in values])
            ax.scatter(xy[sel, 0], xy[sel, 1], s=14, color=cmap(k % 20), label=name, alpha=0.8)
        ax.set(xlabel=f"PC1 ({100 * ratio[0]:.1f}%)",
               ylabel=f"PC2 ({100 * ratio[1]:.1f}%)" if len(ratio) > 1 else "PC2",
               title=f"{title}: by {group_name}")
        ax.legend(fontsize=7, markerscale=1.2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def workdir_path(workdir: str, *, inputs=()) -> pathlib.Path:
    """The output folder, created: new, empty, or one an evaluation wrote before (it holds a
    report.json); never one of the inputs (crema_jax/files.py)."""
    return files.check_output_dir(workdir, marker="report.json", flag="--workdir", inputs=inputs,
                                  create=False)


def write_all(report: dict, workdir, *, roc=None, embeddings=None, predictions=None) -> dict:
    """Writes report.json, report.md and the PNGs under workdir; returns their paths.

    roc: (labels, scores, class_names, title) of the headline test run.
    embeddings: (features, {"label": [...], "source": [...]}, title).
    predictions: arrays saved to predictions.npz (record ids, labels, probabilities of the
        headline test run), so any figure of the report can be recomputed independently.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {"json": workdir / "report.json", "markdown": workdir / "report.md"}
    files.write_atomic(paths["json"], lambda tmp: write_json(report, tmp))
    files.write_text_atomic(paths["markdown"], markdown(report))
    if predictions is not None:
        paths["predictions"] = workdir / "predictions.npz"
        arrays = {k: np.asarray(v) for k, v in predictions.items()}

        def save_npz(tmp):
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz"
                np.savez(f, **arrays)
        files.write_atomic(paths["predictions"], save_npz)
    if roc is not None:
        paths["roc"] = workdir / "roc.png"
        files.write_atomic(paths["roc"], lambda tmp: plot_roc(*roc[:3], tmp, roc[3]))
    if embeddings is not None:
        paths["embeddings"] = workdir / "embeddings_pca.png"
        files.write_atomic(paths["embeddings"], lambda tmp: plot_embeddings(
            embeddings[0], embeddings[1], tmp, embeddings[2]))
    return {k: str(v) for k, v in paths.items()}
