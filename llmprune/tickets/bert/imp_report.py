"""The BERT lottery-ticket report: one row per sparsity level, each kind's metric over seeds, CSV and plot.

``imp`` is the ticket; ``random-prune``, ``random-reinit`` and ``one-shot`` are the baselines at the
same sparsity. A level matches when the ticket's mean is within one std of the dense model's
(``ticket_report.is_matching``); ``highest_matching_sparsity`` is the sparsest level that does.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..ticket_report import is_matching, mean_std, plot_levels, write_csv

KINDS = ("imp", "random-prune", "random-reinit", "one-shot")


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
