"""The lottery-ticket report of the from-scratch experiments: JSON, CSV, markdown, the paper's plots, the ticket.

For every round and arm (``ticket`` or a control) over the trials: ``remaining`` (share of
prunable weights left), ``early_stop_iteration`` (lowest validation loss), ``test_accuracy``
there and ``final_test_accuracy`` (RMSE instead of accuracy for regression), each with mean,
min, max and std. A round matches the dense network when the ticket's mean test accuracy at
the early stop is at least the dense mean minus one std over trials (the rule of
``ticket_report.is_matching``); ``matching.down_to_remaining`` is the smallest share of weights
down to which every round matches. Plots (as Frankle & Carbin's figures): test accuracy at
the early stop and the early-stop iteration against the weights remaining, every arm, with
min-max bars; learning curves (test accuracy against iteration) at chosen levels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ...io.writer import write_folder_atomically
from ..ticket_report import is_matching, plot_levels, stats, write_csv

ARM_STYLES = {"ticket": ("C0", "o", "winning ticket (rewind)"), "reinit": ("C2", "^", "random re-init"),
              "random-mask": ("C1", "s", "random mask"), "one-shot": ("C3", "D", "one-shot pruning"),
              "permuted": ("C4", "v", "permuted ticket")}
# the paper's LeNet ladder: (265,200 x 0.8^k + 1,000 x 0.9^k) / 266,200
PAPER_LENET_REMAINING = {3: 0.513, 7: 0.211, 12: 0.070, 15: 0.036, 18: 0.019}


def score_key(regression: bool) -> str:
    return "test_rmse" if regression else "test_accuracy"


def build_report(results: list[dict], rule, protocol, data, settings: dict, regression: bool = False) -> dict:
    key = score_key(regression)
    keys = ("early_stop_iteration", key, f"final_{key}")
    trials = sorted({r["seed"] for r in results})
    by_round: dict[int, dict[str, list[dict]]] = {}
    for result in results:
        by_round.setdefault(result["round"], {}).setdefault(result["kind"], []).append(result)
    rounds = []
    for r in range(rule.rounds + 1):
        arms = {}
        for kind, found in sorted(by_round.get(r, {}).items(), key=lambda kv: list(ARM_STYLES).index(kv[0])):
            arms[kind] = {"remaining": float(np.mean([f["remaining"] for f in found])),
                          **{k: stats([f[k] for f in found]) for k in keys}}
        rounds.append({"round": r, "remaining": arms["ticket"]["remaining"], "arms": arms})
    dense = [f[key] for f in by_round[0]["ticket"]]
    for row in rounds:
        row["matching"] = is_matching(row["arms"]["ticket"][key]["mean"], dense, higher_is_better=not regression)
    down_to = 0
    while down_to + 1 < len(rounds) and rounds[down_to + 1]["matching"]:
        down_to += 1
    report = {
        "kind": "lottery-ticket-from-scratch",
        "preset": protocol.preset,
        "data": {"name": data.name, "train": len(data.train), "validation": len(data.validation),
                 "test": len(data.test), "classes": data.classes},
        "protocol": settings["protocol"],
        "trials": trials,
        "arms": sorted({r["kind"] for r in results}, key=list(ARM_STYLES).index),
        "score": key,
        "rounds": rounds,
        "matching": {"rule": f"ticket mean {key} at the early stop within one std (over trials) of the dense network's",
                     "down_to_round": down_to, "down_to_remaining": rounds[down_to]["remaining"],
                     "matching_rounds": [row["round"] for row in rounds if row["matching"]]},
        "timing": {"train_and_eval_seconds": round(sum(r["seconds"] for r in results), 1),
                   "train_and_eval_cpu_seconds": round(sum(r["cpu_seconds"] for r in results), 1)},
    }
    if protocol.preset == "lenet" and protocol.hidden == [300, 100] and (protocol.rate, protocol.output_rate) == (0.2, 0.1):
        report["paper_ladder"] = {str(k): {"paper": v, "here": round(rounds[k]["remaining"], 4)}
                                  for k, v in PAPER_LENET_REMAINING.items() if k < len(rounds)}
    if protocol.preset == "sum-of-two":
        last = rounds[-1]["arms"]
        report["ticket_ood_rmse"] = last["ticket"]["final_test_rmse"]["mean"]
        report["full_ood_rmse"] = rounds[0]["arms"]["ticket"]["final_test_rmse"]["mean"]
        report["reinit_ticket_ood_rmse"] = last["reinit"]["final_test_rmse"]["mean"] if "reinit" in last else None
        report["permuted_ticket_ood_rmse"] = last["permuted"]["final_test_rmse"]["mean"] if "permuted" in last else None
        final = [r for r in results if r["kind"] == "ticket" and r["round"] == rule.rounds]
        report["surviving_weights"] = {f"trial {r['seed']}": r.get("surviving_weights") for r in final}
    return report


def csv_table(report: dict) -> tuple[list[str], list[list]]:
    key = report["score"]
    keys = ("early_stop_iteration", key, f"final_{key}")
    header = ["round", "arm", "remaining"] + [f"{k}_{s}" for k in keys for s in ("mean", "min", "max")] + ["matching"]
    table = []
    for row in report["rounds"]:
        for arm, entry in row["arms"].items():
            table.append([row["round"], arm, round(entry["remaining"], 6)]
                         + [entry[k][s] for k in keys for s in ("mean", "min", "max")]
                         + [row["matching"] if arm == "ticket" else ""])
    return header, table


def markdown(report: dict) -> str:
    """The report as a table: per round, each arm's score at the early stop and early-stop iteration."""
    key = report["score"]
    scale, form = (100, ".2f") if key == "test_accuracy" else (1, ".3g")
    arms = report["arms"]
    lines = [f"# {report['preset']} on {report['data']['name']}: lottery tickets, {len(report['trials'])} trial(s)", "",
             f"{key.replace('_', ' ')}{' (%)' if scale == 100 else ''} at the early stop, mean [min, max] over trials; "
             "early-stop iteration (mean); final = at the last iteration.", "",
             "| round | remaining | " + " | ".join(f"{a} | {a} final | {a} early stop" for a in arms) + " | matching |",
             "|---" * (3 + 3 * len(arms)) + "|"]
    for row in report["rounds"]:
        cells = []
        for arm in arms:
            entry = row["arms"].get(arm)
            if entry is None:
                cells += ["-", "-", "-"]
                continue
            s, f = entry[key], entry[f"final_{key}"]
            cells += [f"{scale * s['mean']:{form}} [{scale * s['min']:{form}}, {scale * s['max']:{form}}]",
                      f"{scale * f['mean']:{form}}", f"{entry['early_stop_iteration']['mean']:.0f}"]
        lines.append(f"| {row['round']} | {100 * row['remaining']:.1f}% | " + " | ".join(cells)
                     + f" | {'yes' if row['matching'] else ''} |")
    matching = report["matching"]
    lines += ["", f"Tickets match the dense network (rule: {matching['rule']}) down to "
              f"{100 * matching['down_to_remaining']:.1f}% of the weights (round {matching['down_to_round']})."]
    return "\n".join(lines) + "\n"


def _series(report: dict, key: str) -> list[dict]:
    series = []
    for arm in report["arms"]:
        rows = [row for row in report["rounds"] if arm in row["arms"]]
        color, marker, label = ARM_STYLES[arm]
        entries = [row["arms"][arm][key] for row in rows]
        series.append({"label": label, "color": color, "marker": marker,
                       "x": [100 * row["arms"][arm]["remaining"] for row in rows],
                       "y": [e["mean"] for e in entries], "low": [e["min"] for e in entries],
                       "high": [e["max"] for e in entries]})
    return series


def curve_rounds(report: dict, count: int = 5) -> list[int]:
    """Rounds for the learning curves: the paper's LeNet levels when present, else spread evenly."""
    last = len(report["rounds"]) - 1
    chosen = [r for r in (0, 3, 7, 12, 15) if r <= last] if report["preset"] == "lenet" else []
    if len(chosen) < min(count, last + 1):
        chosen = sorted({int(round(i * last / max(count - 1, 1))) for i in range(count)})
    return chosen


def plot_curves(report: dict, results_by_job: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = report["score"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, r in enumerate(curve_rounds(report)):
        for arm, style in (("ticket", "-"), ("reinit", "--")):
            curves = [c for (kind, rnd, _), c in results_by_job.items() if kind == arm and rnd == r]
            if not curves:
                continue
            mean = np.mean([c[key] for c in curves], axis=0)
            remaining = 100 * report["rounds"][r]["remaining"]
            ax.plot(curves[0]["iteration"], mean, style, color=f"C{index}",
                    label=f"{remaining:.1f}% {'reinit' if arm == 'reinit' else 'ticket'}")
    ax.set_xlabel("training iteration")
    ax.set_ylabel(key.replace("_", " ") + " (mean over trials)")
    ax.set_title(f"{report['preset']} on {report['data']['name']}: learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict, folder: Path, results: list[dict]) -> dict[str, Path]:
    folder = Path(folder)
    key = report["score"]
    name = f"{report['preset']} on {report['data']['name']}"
    paths = {"json": folder / "lth_report.json", "csv": folder / "lth_report.csv", "md": folder / "lth_report.md",
             "accuracy_png": folder / f"lth_{key}.png", "early_stop_png": folder / "lth_early_stop.png",
             "curves_png": folder / "lth_curves.png"}
    write_csv(paths["csv"], *csv_table(report))
    paths["md"].write_text(markdown(report), encoding="utf-8")
    dense = report["rounds"][0]["arms"]["ticket"][key]
    log_x = report["rounds"][-1]["remaining"] < 0.2
    plot_levels(paths["accuracy_png"], _series(report, key), "weights remaining (%)",
                f"{key.replace('_', ' ')} at the early stop", f"{name}: {key.replace('_', ' ')}",
                band=(dense["min"], dense["mean"], dense["max"]), log_x=log_x, invert_x=True)
    plot_levels(paths["early_stop_png"], _series(report, "early_stop_iteration"), "weights remaining (%)",
                "early-stop iteration (min validation loss)", f"{name}: early stopping", log_x=log_x, invert_x=True)
    plot_curves(report, {(r["kind"], r["round"], r["seed"]): r["curve"] for r in results}, paths["curves_png"])
    report["files"] = {k: str(v) for k, v in paths.items()}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return paths


def save_ticket(runner, domain, report: dict, folder: Path) -> Path | None:
    """The winning ticket of the first trial: mask + initial (rewind) weights, as safetensors.

    The round is the sparsest one down to which every round matches the dense network (for
    sum-of-two: the last, four-weight one); no folder when no pruned round matches.
    """
    from safetensors.torch import save_file

    toy = report["preset"] == "sum-of-two"
    round_index = len(report["rounds"]) - 1 if toy else report["matching"]["down_to_round"]
    if round_index == 0:
        return None
    seed = report["trials"][0]
    model = domain.new_model(seed)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = runner.rewind_state(seed, initial)
    masks = runner.ticket_masks(seed, round_index)
    weights = {k: (v * masks[k].to(v.device, v.dtype) if k in masks else v).contiguous().cpu()
               for k, v in start.items()}
    arm = report["rounds"][round_index]["arms"]["ticket"]
    info = {"kind": "lottery-ticket", "preset": report["preset"], "data": report["data"]["name"], "seed": seed,
            "round": round_index, "remaining": arm["remaining"], "rewind": report["protocol"]["rewind"],
            report["score"]: arm[report["score"]]["per_trial"][0],
            f"{report['score']}_over_trials": arm[report["score"]],
            f"dense_{report['score']}_over_trials": report["rounds"][0]["arms"]["ticket"][report["score"]],
            "architecture": report["protocol"]["architecture"], "hidden": report["protocol"]["hidden"],
            "files": {"initial_weights.safetensors": "every parameter at its rewind value, pruned weights zero",
                      "mask.safetensors": "1 = kept, per prunable weight"}}

    def fill(tmp: Path) -> None:
        save_file(weights, str(tmp / "initial_weights.safetensors"))
        save_file({k: m.to(torch.uint8).contiguous() for k, m in masks.items()}, str(tmp / "mask.safetensors"))
        (tmp / "ticket.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    return write_folder_atomically(Path(folder), fill, overwrite=True)
