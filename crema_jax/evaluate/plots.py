"""The evaluation figures: ROC curves, a PCA of the features, and the paired differences of two
models (a forest plot), each written by report.write_all."""
from __future__ import annotations

import numpy as np

from crema_jax.evaluate import scoring, texts


def pyplot():
    """matplotlib's pyplot drawing to files. Imported on first use: matplotlib costs ~0.3 s and
    only the commands that draw need it."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers or in CI
    import matplotlib.pyplot as plt
    return plt


def plot_roc(labels: np.ndarray, scores: np.ndarray, class_names, path, title: str) -> None:
    """One ROC curve per scorable class, AUROC in the legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    drawn = 0
    for c, name in enumerate(class_names):
        if scoring.class_status(labels[:, c]) is not None:
            continue
        fpr, tpr = scoring.roc_curve(labels[:, c], scores[:, c])
        # Straight segments between operating points: the area under them is the AUROC
        # (tied scores give a diagonal segment, as in sklearn's RocCurveDisplay).
        ax.plot(fpr, tpr, lw=1.5,
                label=f"{name} ({scoring.auroc(labels[:, c], scores[:, c]):.3f})")
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
    plt = pyplot()
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


def _p_label(entry: dict) -> str:
    """"p=0.078", or "p < 0.002" for a bound (texts.p_text), and a class's Holm-adjusted p
    (", Holm 0.78", what its verdict is decided on); "" without a p-value."""
    if entry.get("p") is None:
        return ""
    text = texts.p_text(entry)
    label = f"p {text}" if text[0] in "<≤" else f"p={text}"
    holm = entry.get("p_holm")
    return label + (f", Holm {texts.p_text({'p': holm})}" if holm is not None else "")


def plot_paired_differences(comparisons: list[dict], class_display: dict, models: dict,
                            path) -> None:
    """AUROC(A) - AUROC(B) per class (its test positives in brackets) with its DeLong CI, and
    the macro AUROC difference with its paired-bootstrap CI (bottom row, black); one panel per
    comparison, the verdict in its title."""
    plt = pyplot()
    rows = max(len(c["per_class"]) for c in comparisons) + 1
    fig, axes = plt.subplots(1, len(comparisons), figsize=(7 * len(comparisons),
                                                           1.2 + 0.42 * rows), squeeze=False)
    for ax, comparison in zip(axes[0], comparisons):
        names, points, lows, highs, labels = [], [], [], [], []
        for name, c in comparison["per_class"].items():
            if "skipped" in c or c["p"] is None:  # no test: no CI to draw
                continue
            names.append(f"{class_display.get(name, name)} ({c['n_pos']})")
            points.append(c["difference"])  # no CI where DeLong's variance is 0
            lows.append(np.nan if c["ci"]["low"] is None else c["ci"]["low"])
            highs.append(np.nan if c["ci"]["high"] is None else c["ci"]["high"])
            labels.append(_p_label(c))
        macro = comparison["macro_auroc"]
        if macro["difference"] is not None:
            names.append("macro AUROC")
            points.append(macro["difference"])
            lows.append(macro["ci"]["low"] if macro["ci"]["low"] is not None else np.nan)
            highs.append(macro["ci"]["high"] if macro["ci"]["high"] is not None else np.nan)
            labels.append(_p_label(macro))
        y = np.arange(len(names))[::-1]
        points, lows, highs = (np.asarray(v, np.float64) for v in (points, lows, highs))
        colours = ["tab:blue"] * (len(names) - 1) + ["black"] if names else []
        for yi, point, low, high, colour, label in zip(y, points, lows, highs, colours, labels):
            ax.errorbar(point, yi, xerr=[[point - low], [high - point]], fmt="o", color=colour,
                        capsize=3, lw=1.5)
            ax.annotate(label, (high if np.isfinite(high) else point, yi),
                        xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
        ax.axvline(0.0, color="grey", ls="--", lw=1)
        ax.set_yticks(y, names, fontsize=8)
        level = f"{100 * (1 - comparison['alpha']):g}%"
        ax.set(xlabel=f"AUROC(A) - AUROC(B), {level} CI", title=f"{comparison['run']}\n"
               f"{comparison['verdict']}")
        ax.title.set_fontsize(9)
    fig.suptitle("  vs  ".join(f"{label} = {m['checkpoint']}" for label, m in models.items()),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
