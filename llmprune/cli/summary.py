"""The closing lines that ``prune`` and ``shrink`` print alike: the evaluation table, where the model went,
and the report itself when nothing else keeps it."""
from __future__ import annotations

import json


def print_results_and_output(evaluation: dict, after: str, output: str | None) -> None:
    """The lm-eval/perplexity table of ``evaluate`` (under "after <after>:") and the output folder, if any."""
    if "results" in evaluation:
        from ..evaluate import format_table

        print(f"\nafter {after}:\n" + format_table(evaluation["results"]))
    if output:
        print(f"\nsaved to {output}")


def print_report_if_unkept(report: dict, report_path: str | None, bulky: str) -> None:
    """With no output folder and no report file, the report goes to stdout (less its bulky per-unit part)."""
    if not report.get("output") and not report_path:
        print(json.dumps({k: v for k, v in report.items() if k != bulky}, indent=2))


def reconstruction_line(entry: dict | None) -> str | None:
    """One line on block reconstruction: the mean held-out block error before and after, and the blocks
    whose training was rolled back because it made that error worse."""
    if not entry or entry.get("mean_held_out_error_before") is None:
        return None
    rolled = entry.get("rolled_back_blocks") or []
    return (f"block reconstruction: mean held-out block error {entry['mean_held_out_error_before']:.4g} -> "
            f"{entry['mean_held_out_error_after']:.4g} ({entry['seconds']:.1f} s)"
            + (f"; {len(rolled)} of {len(entry['blocks'])} blocks rolled back (training made them worse): {rolled}"
               if rolled else ""))
