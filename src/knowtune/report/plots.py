"""The study report's figures (matplotlib, Agg backend): each function takes plain dicts from
the analysis and returns PNG bytes, so the HTML page can embed them and the report folder can
hold them as files. Accuracies are percentages, as in Gekhman et al. (EMNLP 2024)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from knowtune.slick.categories import CATEGORIES  # noqa: E402

CATEGORY_COLOURS = {"HighlyKnown": "#1b7837", "MaybeKnown": "#7fbf7b", "WeaklyKnown": "#f1a340", "Unknown": "#b2182b"}


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def accuracy_by_epoch(curves: Mapping[str, Sequence[Mapping[str, Any]]], variants: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Test accuracy against epoch, one line per variant; a star marks the EARLY_STOP epoch."""
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for name, points in curves.items():
        epochs = [p["epoch"] for p in points if p["test"] is not None]
        line, = axis.plot(epochs, [p["test"] for p in points if p["test"] is not None], marker=".", label=name)
        es = variants[name]["es"]
        if es is not None:
            axis.plot([es["epoch"]], [es["test"]], marker="*", markersize=13, color=line.get_color())
    axis.set(xlabel="epoch (0 = base model)", ylabel="test accuracy (EM %)", title="Test accuracy during fine-tuning (star: EARLY_STOP)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
    return png_bytes(figure)


def fitted_by_category(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes:
    """Share of training examples fitted per epoch, per SliCK category, one panel per variant."""
    names = list(curves)
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False, sharey=True)
    for axis, name in zip(axes.flat, names):
        points = curves[name]
        for category in CATEGORIES:
            values = [(p["epoch"], p["fitted"][category]) for p in points if p["fitted"].get(category) is not None]
            if values:
                axis.plot(*zip(*values), marker=".", color=CATEGORY_COLOURS[category], label=category)
        axis.set(title=name, xlabel="epoch", ylim=(-3, 103))
        axis.grid(alpha=0.3)
    for axis in axes[:, 0]:
        axis.set_ylabel("train examples fitted (%)")
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    handles: dict[str, Any] = {}
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        axes[0, 0].legend(list(handles.values()), list(handles), fontsize=7, loc="lower right")
    figure.suptitle("Fitted training examples per SliCK category")
    return png_bytes(figure)


def es_vs_conv(variants: Mapping[str, Mapping[str, Any]], paper: Mapping[str, Mapping[str, float] | None]) -> bytes:
    """Test accuracy at EARLY_STOP and at CONVERGENCE per variant; diamonds mark the paper's values where they exist."""
    names = list(variants)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.2))
    width = 0.38
    for offset, stage, colour in ((-width / 2, "es", "#4575b4"), (width / 2, "conv", "#d73027")):
        values = [(variants[n][stage] or {}).get("test") or 0.0 for n in names]
        axis.bar([i + offset for i in range(len(names))], values, width, color=colour, label="EARLY_STOP" if stage == "es" else "CONVERGENCE")
        marks = [(i + offset, paper[n][stage]) for i, n in enumerate(names) if paper.get(n)]
        if marks:
            axis.scatter(*zip(*marks), marker="D", color="black", zorder=3, s=22, label="paper" if stage == "es" else None)
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    axis.set(ylabel="test accuracy (EM %)", title="EARLY_STOP against CONVERGENCE")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    return png_bytes(figure)


def linear_model_fit(points: Sequence[Mapping[str, Any]], models: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Observed test accuracy against the linear model's prediction, in-distribution and OOD."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 4))
    for axis, (name, key) in zip(axes, (("in_distribution", "test"), ("ood", "ood"))):
        model = models[name]
        usable = [p for p in points if p[key] is not None]
        axis.set(title=f"{name.replace('_', '-')} test set", xlabel="predicted accuracy (%)", ylabel="observed accuracy (%)")
        if model["b_kn"] is None or not usable:
            axis.text(0.5, 0.5, "not fitted", ha="center", transform=axis.transAxes)
            continue
        predicted = [model["b0"] + model["b_kn"] * p["known"] + model["b_unk"] * p["unknown"] for p in usable]
        axis.scatter(predicted, [p[key] for p in usable], s=12)
        low, high = min(predicted + [p[key] for p in usable]), max(predicted + [p[key] for p in usable])
        axis.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1)
        r2 = "n/a" if model["r2"] is None else f"{model['r2']:.2f}"
        axis.text(0.03, 0.92, f"R² = {r2}", transform=axis.transAxes)
        axis.grid(alpha=0.3)
    return png_bytes(figure)


def category_distribution(shares: Mapping[str, Mapping[str, float]], paper: Mapping[str, float]) -> bytes:
    """SliCK category shares per audited split, beside the paper's (PaLM 2-M on EntityQuestions)."""
    groups = {**shares, "paper (PaLM 2-M)": paper}
    figure, axis = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(groups)
    for j, (label, values) in enumerate(groups.items()):
        axis.bar([i + (j - (len(groups) - 1) / 2) * width for i in range(len(CATEGORIES))], [values.get(c, 0.0) for c in CATEGORIES],
                 width, label=label, hatch="//" if label.startswith("paper") else None, alpha=0.85)
    axis.set_xticks(range(len(CATEGORIES)), CATEGORIES)
    axis.set(ylabel="share of examples (%)", title="SliCK category distribution")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    return png_bytes(figure)


def categories_by_exposure(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Stacked category shares per pretraining-exposure bucket (facts seen more often should be Known)."""
    figure, axis = plt.subplots(figsize=(7.5, 4))
    labels = [f"{r['bucket']}\n(n={r['facts']})" for r in rows]
    bottom = [0.0] * len(rows)
    for category in CATEGORIES:
        values = [r["shares"][category] for r in rows]
        axis.bar(labels, values, bottom=bottom, color=CATEGORY_COLOURS[category], label=category)
        bottom = [b + v for b, v in zip(bottom, values)]
    axis.set(xlabel="pretraining exposures of the fact (per corpus pass)", ylabel="share of facts (%)",
             title="SliCK categories against pretraining exposure")
    axis.legend(fontsize=8, loc="upper left")
    return png_bytes(figure)


def method_dynamics(curves: Mapping[str, Sequence[Mapping[str, Any]]], labels: Mapping[str, str]) -> bytes:
    """Per method and epoch (Kaplan, Gekhman et al. 2026): new-fact learning, held-out Known accuracy,
    test accuracy and, when measured, representation drift; one line per trained method."""
    panels = [("new_facts", "Unknown training facts fitted (%)"), ("held_out", "held-out Known accuracy (%)"),
              ("test", "test accuracy (EM %)"), ("drift", "representation drift (1 - cos)")]
    if not any(p.get("drift") is not None for points in curves.values() for p in points):
        panels = panels[:3]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.1 * len(panels), 3.8))
    methods = [m for m in curves if m != "sft_es"]  # the sft run read at another epoch: the same curve
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    for axis, (key, label) in zip(axes, panels):
        for method in methods:
            values = [(p["epoch"], p[key]) for p in curves[method] if p.get(key) is not None]
            if values:
                axis.plot(*zip(*values), marker=".", color=colours[method], label=labels.get(method, method))
        axis.set(xlabel="epoch (0 = base model)", ylabel=label)
        axis.grid(alpha=0.3)
    handles = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[1].legend(list(handles.values()), list(handles), fontsize=7)
    figure.suptitle("Learning new facts against keeping known ones, per method")
    return png_bytes(figure)


def forgetting_against_learning(table: Sequence[Mapping[str, Any]]) -> bytes:
    """Each method at its judged epoch: held-out forgetting (y) against new-fact learning (x)."""
    figure, axis = plt.subplots(figsize=(6.2, 4.4))
    for row in table:
        x = row["new_facts"] if row["new_facts"] is not None else 0.0
        axis.scatter([x], [row["forgetting"]], s=40)
        axis.annotate(row["label"], (x, row["forgetting"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axis.set(xlabel="Unknown training facts fitted (%)", ylabel="held-out Known forgetting (points)",
             title="Forgetting against new-fact learning (lower right is best)")
    axis.grid(alpha=0.3)
    return png_bytes(figure)


def key_overlap(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Forgetting (with its standard error) and representation drift against world size, one line per key type."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for key_type in dict.fromkeys(r["key_type"] for r in rows):
        mine = sorted((r for r in rows if r["key_type"] == key_type and r["forgetting"] is not None), key=lambda r: r["entities"])
        sizes = [r["entities"] for r in mine]
        axes[0].errorbar(sizes, [100 * r["forgetting"] for r in mine], yerr=[100 * (r["forgetting_se"] or 0) for r in mine],
                         marker="o", capsize=3, label=f"{key_type} keys")
        axes[1].plot(sizes, [100 * r["drift"] for r in mine], marker="o", label=f"{key_type} keys")
    axes[0].set(xlabel="entities in the world", ylabel="held-out forgetting (%)", title="Forgetting of held-out known facts")
    axes[1].set(xlabel="entities in the world", ylabel="drift (1 - cos, %)", title="Representation drift of held-out entities")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return png_bytes(figure)
