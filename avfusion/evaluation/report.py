"""The evaluation report: evidence verdicts, robustness.json / .md, the printed table, plots.

Results come in keyed by :class:`~avfusion.evaluation.conditions.Condition`; condition
names appear only in what is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from avfusion import storage
from avfusion.evaluation.conditions import NORMAL, Condition

DESTROYS, HARMLESS = 0.25, 0.75  # share of a modality's evidence left: below, it is gone; above, it is intact

Results = dict[Condition, dict[str, dict]]  # {condition: {model name: summary}}


def verdict(left: float) -> str:
    """What a share of evidence left means: destroys, degrades or harmless."""
    return "destroys" if left < DESTROYS else "harmless" if left > HARMLESS else "degrades"


def evidence_left(results: Results, chance: float) -> dict[Condition, tuple[float, str]]:
    """Which corruptions matter, measured: for each single-corruption condition, the
    share of its modality's class evidence it leaves, read off the unimodal baseline on
    that modality, ``(top1 - chance) / (top1 clean - chance)``, and a verdict: *destroys*
    (< 0.25), *degrades*, or *harmless* (> 0.75; e.g. blur sized for 224² frames on 64²
    ones). A condition is left out when its baseline is missing or was at chance on
    clean input (nothing to lose)."""
    out = {}
    for cond, by_model in results.items():
        if cond.corruption is None:
            continue
        baseline = f"{cond.modality}-only"
        if baseline not in by_model or results[NORMAL][baseline]["top1"] - chance < 0.05:
            continue
        left = (by_model[baseline]["top1"] - chance) / (results[NORMAL][baseline]["top1"] - chance)
        out[cond] = (left, verdict(left))
    return out


def markdown_table(results: Results, chance: float | None = None) -> str:
    """One row per condition; with ``chance`` and a baseline on the corrupted modality,
    also the share of that modality's evidence the corruption leaves (:func:`evidence_left`)."""
    models = list(next(iter(results.values())))
    left = evidence_left(results, chance) if chance is not None else {}
    head = [
        "condition",
        "w_audio",
        "w_video",
        "agreement",
        *[f"top-1 {m}" for m in models],
        "top-5 fused",
        *(["evidence left (unimodal)"] if left else []),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cond, by_model in results.items():
        fused = by_model["fused"]
        attention = (f"{fused.get(k, float('nan')):.3f}" for k in ("w_audio", "w_video", "agreement"))
        cells = [
            cond.name,
            *attention,
            *[f"{by_model[m]['top1']:.3f}" for m in models],
            f"{fused['top5']:.3f}",
        ]
        if left:
            cells.append(f"{left[cond][0]:.2f} {left[cond][1]}" if cond in left else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: Results, out: str | Path, meta: dict) -> list[str]:
    """robustness.json, robustness.md and the three PNGs (local or URL); returns the paths."""
    out = str(out)
    storage.makedirs(out)
    named = {c.name: by_model for c, by_model in results.items()}
    storage.write_text(
        storage.join(out, "robustness.json"), json.dumps({"meta": meta, "conditions": named}, indent=1)
    )
    storage.write_text(
        storage.join(out, "robustness.md"),
        f"# Robustness: {meta.get('checkpoint', '')}\n\n"
        f"{meta.get('n_clips', 0)} clips, split `{meta.get('split')}`, "
        f"seed {meta.get('seed')}.\n\n" + markdown_table(results, _chance(meta)),
    )
    return [storage.join(out, "robustness.json"), storage.join(out, "robustness.md"), *plot(results, out)]


def _chance(meta: dict) -> float | None:
    return 1 / len(meta["label_map"]) if meta.get("label_map") else None


def plot(results: Results, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    singles = [c for c in results if len(c.corruptions) <= 1 and c.severity in (None, 3)]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(singles)), 4))
    wa = [results[c]["fused"].get("w_audio", np.nan) for c in singles]
    x = np.arange(len(singles))
    ax.bar(x, wa, label="w_audio", color="#d95f02")
    ax.bar(
        x,
        [results[c]["fused"].get("w_video", np.nan) for c in singles],
        bottom=wa,
        label="w_video",
        color="#1b9e77",
    )
    ax.axhline(
        results[NORMAL]["fused"].get("w_audio", np.nan), color="k", lw=0.8, ls="--", label="normal w_audio"
    )
    ax.set_xticks(x, [c.name for c in singles], rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("mean attention")
    ax.set_title("Attention per condition (severity 3)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(storage.join(out, "attention_by_condition.png"))
    with storage.atomic_file(paths[-1]) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

    graded = {c.corruptions[0]: c for c in results if c.severity is not None}  # by (corruption, severity)
    families = sorted({name for name, _ in graded})
    models = list(results[NORMAL])
    for what, fname in (("top1", "accuracy_vs_severity.png"), ("w_audio", "attention_vs_severity.png")):
        cols = 4
        rows = max(1, -(-len(families) // cols))
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
        for ax, name in zip(axes.flat, families, strict=False):
            sev = [s for s in range(1, 6) if (name, s) in graded]
            for m in models if what == "top1" else ["fused"]:
                ys = [results[NORMAL][m].get(what, np.nan)] + [
                    results[graded[name, s]][m].get(what, np.nan) for s in sev
                ]
                ax.plot([0, *sev], ys, marker="o", label=m)
            ax.set_title(name, fontsize=9)
            ax.set_ylim(0, 1)
            ax.set_xticks(range(0, 6))
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(families) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle("top-1 vs severity (0 = clean)" if what == "top1" else "w_audio vs severity (0 = clean)")
        fig.tight_layout()
        paths.append(storage.join(out, fname))
        with storage.atomic_file(paths[-1]) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
    return paths
