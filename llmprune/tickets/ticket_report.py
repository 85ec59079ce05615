"""What every lottery-ticket report shares: statistics over seeds, the matching rule, CSV and level plots.

Each domain writes its own report from these pieces (``bert/imp_report.py``, ``scratch/lth_report.py``).

Matching (Chen et al. 2020): a level is matching when the ticket's mean metric over seeds is
at least the dense model's mean minus one standard deviation (sample std over seeds; with
one seed the band has zero width, so the ticket must reach the dense score).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return float(np.mean(values)), std


def stats(values: list[float]) -> dict:
    """Mean, sample std, min, max and the values themselves (one per seed / trial)."""
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "min": float(np.min(values)), "max": float(np.max(values)),
            "per_trial": [float(v) for v in values]}


def is_matching(ticket_mean: float, dense: list[float], higher_is_better: bool = True) -> bool:
    dense_mean, dense_std = mean_std(dense)
    if higher_is_better:
        return bool(ticket_mean >= dense_mean - dense_std)
    return bool(ticket_mean <= dense_mean + dense_std)


def write_csv(path: Path, header: list[str], table: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(table)
    return path


def plot_levels(path: Path, series: list[dict], xlabel: str, ylabel: str, title: str, band: tuple | None = None,
                log_x: bool = False, invert_x: bool = False) -> Path:
    """One line per arm against the pruning level. Each series: label, x, y, and either
    ``err`` (symmetric) or ``low``/``high`` (e.g. min and max over trials); ``band``: the
    dense model's (low, centre, high) drawn as a grey band."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if band is not None:
        low, centre, high = band
        ax.axhspan(low, high, color="grey", alpha=0.25, label=f"dense ({centre:.4g})")
        ax.axhline(centre, color="grey", lw=1)
    for index, line in enumerate(series):
        y = np.asarray(line["y"], dtype=float)
        if "err" in line:
            yerr = line["err"]
        else:
            yerr = [y - np.asarray(line["low"], dtype=float), np.asarray(line["high"], dtype=float) - y]
        ax.errorbar(line["x"], y, yerr=yerr, color=line.get("color", f"C{index}"), marker=line.get("marker", "o"),
                    ms=4, capsize=3, label=line["label"])
    if log_x:
        ax.set_xscale("log")
        # percentages a reader can name, not powers of ten
        low = min(min(line["x"]) for line in series)
        ticks = [t for t in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1) if t >= low * 0.8]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    if invert_x:
        ax.invert_xaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
