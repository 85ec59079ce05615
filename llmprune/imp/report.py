"""Reports of IMP runs: the shared pieces (statistics over seeds, the matching rule, CSV and
level plots, used by every domain) and the BERT report (one row per sparsity level).

Matching (Chen et al. 2020): a level is matching when the ticket's mean metric over seeds is
at least the dense model's mean minus one standard deviation (sample std over seeds; with
one seed the band has zero width, so the ticket must reach the dense score).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

KINDS = ("imp", "random-prune", "random-reinit", "one-shot")


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


def build_report(results: list[dict], levels: list[float], metric: str, settings: dict) -> dict:
    """Rows for round 0 (dense) and each level, each kind's per-seed values, mean and std."""
    seeds = sorted({r["seed"] for r in results})
    by_key = {(r["kind"], r["round"], r["seed"]): r for r in results}
    dense = [by_key[("imp", 0, s)]["metrics"][metric] for s in seeds]
    dense_mean, dense_std = mean_std(dense)
    rows = []
    for round_index, level in enumerate([0.0] + list(levels)):
        row = {"round": round_index, "sparsity": level}
        for kind in KINDS:
            found = [by_key[(kind, round_index, s)] for s in seeds if (kind, round_index, s) in by_key]
            if not found:
                continue
            values = [f["metrics"][metric] for f in found]
            mean, std = mean_std(values)
            row[kind] = {"per_seed": values, "mean": mean, "std": std,
                         "measured_sparsity": float(np.mean([f["measured_sparsity"] for f in found])),
                         "all_metrics": [f["metrics"] for f in found]}
        row["matching"] = is_matching(row["imp"]["mean"], dense)
        rows.append(row)
    matching = [row for row in rows if row["matching"]]
    best = max(matching, key=lambda row: row["sparsity"])
    return {
        "metric": metric,
        "seeds": seeds,
        "dense": {"mean": dense_mean, "std": dense_std, "per_seed": dense},
        "highest_matching_sparsity": best["sparsity"],
        "highest_matching_round": best["round"],
        "rows": rows,
        "settings": settings,
        "timing": {"train_and_eval_seconds": round(sum(r["seconds"] for r in results), 1),
                   # None when some job was recorded before CPU time was measured
                   "train_and_eval_cpu_seconds": round(sum(r["cpu_seconds"] for r in results), 1)
                   if all("cpu_seconds" in r for r in results) else None},
    }


def csv_rows(report: dict) -> tuple[list[str], list[list]]:
    seeds = report["seeds"]
    header = ["round", "sparsity"]
    kinds = [k for k in KINDS if any(k in row for row in report["rows"][1:]) or k == "imp"]
    for kind in kinds:
        header += [f"{kind}_seed{s}" for s in seeds] + [f"{kind}_mean", f"{kind}_std"]
    header += ["matching"]
    table = []
    for row in report["rows"]:
        line = [row["round"], row["sparsity"]]
        for kind in kinds:
            entry = row.get(kind)
            line += (entry["per_seed"] + [entry["mean"], entry["std"]]) if entry else [""] * (len(seeds) + 2)
        table.append(line + [row["matching"]])
    return header, table


def plot(report: dict, path: Path, title: str) -> Path:
    dense = report["dense"]
    styles = {"imp": ("C0", "o", "IMP ticket (rewind)"), "random-prune": ("C1", "s", "random pruning"),
              "random-reinit": ("C2", "^", "random re-init"), "one-shot": ("C3", "D", "one-shot magnitude")}
    series = []
    for kind, (color, marker, label) in styles.items():
        rows = [row for row in report["rows"] if kind in row and (kind == "imp" or row["round"] > 0)]
        if rows:
            series.append({"label": label, "color": color, "marker": marker,
                           "x": [100 * row["sparsity"] for row in rows], "y": [row[kind]["mean"] for row in rows],
                           "err": [row[kind]["std"] for row in rows]})
    band = (dense["mean"] - dense["std"], dense["mean"], dense["mean"] + dense["std"])
    return plot_levels(path, series, "sparsity of encoder + pooler weights (%)", report["metric"], title, band)


def write_report(report: dict, folder: Path, title: str) -> dict[str, Path]:
    folder = Path(folder)
    paths = {"json": folder / "imp_report.json", "csv": folder / "imp_report.csv", "png": folder / "imp_report.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_csv(paths["csv"], *csv_rows(report))
    plot(report, paths["png"], title)
    return paths
