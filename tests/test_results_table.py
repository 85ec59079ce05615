"""The results table's recipe rows (eval/bench_results_table.py): recipe parsing, which rows are planned,
the cost yardstick against SparseGPT and the task columns of merged rows."""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "eval" / "bench_results_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("bench_results_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_modifiers_become_prune_overrides(table):
    assert table.parse_recipe("admm+reconstruct+auto") == ("admm", {"reconstruct": True, "allocation": "auto"})
    assert table.parse_recipe("sparsegpt") == ("sparsegpt", {})
    assert table.parse_recipe("wanda+owl") == ("wanda", {"allocation": "owl"})
    for bad in ("admm+fast", "wanda+owl+ramp"):
        with pytest.raises(SystemExit, match="modifier"):
            table.parse_recipe(bad)


def test_allocation_recipes_get_no_nm_rows_and_the_peer_only_its_own_recipes(table):
    args = table.parse_args(["--methods", "dense,admm+reconstruct,sparsegpt+owl,admm+auto,wanda",
                             "--sparsities", "0.7", "--patterns", "2:4"])
    keys = [table.row_key(row) for row in table.plan_rows(args, peer=True)]
    assert keys == [
        "-/dense/None",
        "llmprune/admm+reconstruct/0.7", "llmprune/admm+reconstruct/2:4",
        "llmprune/sparsegpt+owl/0.7",
        "llmprune/admm+auto/0.7",
        "llmprune/wanda/0.7", "llmprune/wanda/2:4",
        "llmcompressor/sparsegpt+owl/0.7",
        "llmcompressor/wanda/0.7", "llmcompressor/wanda/2:4",
    ]


def summary(method: str, seconds: float, threads, produced_by="run", sparsity=0.7, pattern="unstructured", **accuracies):
    return {"library": "llmprune", "method": method, "pattern": pattern, "sparsity": sparsity,
            "prune_seconds": seconds, "threads": threads, "produced_by": produced_by,
            **{f"{task}_acc": acc for task, acc in accuracies.items()}}


def test_cost_ratio_compares_with_sparsegpt_timed_alike(table):
    rows = [summary("sparsegpt", 50.0, None, produced_by=None), summary("sparsegpt", 100.0, 1),
            summary("sparsegpt", 80.0, 1, sparsity=0.5), summary("admm+reconstruct", 600.0, 1)]
    assert table.sparsegpt_time_ratio(rows[3], rows) == pytest.approx(6.0)
    lone = summary("admm", 300.0, 2)  # no SparseGPT row timed with 2 threads
    assert table.sparsegpt_time_ratio(lone, rows + [lone]) is None


def test_merged_rows_show_each_task_they_were_scored_on(table, tmp_path):
    def result(method, ppl, tasks, produced_by):
        return {"row": {"library": "llmprune", "method": method, "sparsity": 0.7, "pattern": None},
                "report": {"total_sparsity": 0.7, "prune_seconds": 10.0, "peak_rss_mb": 900.0},
                "eval": {"ppl": {"wikipedia": {"ppl": ppl}},
                         "lm_eval": {"tasks": {name: {"acc": acc} for name, acc in tasks.items()}}},
                **({"produced_by": produced_by, "threads": 1} if produced_by else {})}

    settings = vars(table.parse_args(["--tasks", "wiki_next"]))
    results = {"command": "cmd", "started": "now", "machine": "here",
               "settings": table.settings_of(argparse.Namespace(**settings)), "costs": None, "notes": [],
               "rows": [result("sparsegpt", 164.0, {"rt_sentiment": 0.4}, None),
                        result("admm+reconstruct", 60.0, {"wiki_next": 0.5}, "cmd")]}
    table.write_outputs(results, tmp_path, "t")
    lines = (tmp_path / "t.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| library"))
    assert "| wiki_next acc | rt_sentiment acc |" in header
    old = next(line for line in lines if "| sparsegpt |" in line)
    new = next(line for line in lines if "| admm+reconstruct |" in line)
    assert "| 164.00 | - | 0.400 |" in old
    assert "| 60.00 | 0.500 | - |" in new
    saved = json.loads((tmp_path / "t.json").read_text())
    assert [r["method"] for r in saved["table"]] == ["sparsegpt", "admm+reconstruct"]


def test_a_row_in_two_merged_tables_keeps_both_runs_task_scores(table, tmp_path):
    def saved(name, tasks):
        data = {"command": name, "settings": table.settings_of(table.parse_args([])), "rows": [
            {"row": {"library": "-", "method": "dense", "sparsity": None, "pattern": None},
             "report": {"total_sparsity": 0.0, "prune_seconds": None, "peak_rss_mb": 1.0},
             "eval": {"ppl": {"wikipedia": {"ppl": 14.9}}, "lm_eval": {"tasks": {t: {"acc": a} for t, a in tasks.items()}}}}]}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        return str(path)

    first, second = saved("new", {"wiki_next": 0.7}), saved("old", {"wiki_next": 0.1, "rt_sentiment": 0.53})
    assert table.main(["--methods", "", "--merge", f"{first},{second}", "--out-dir", str(tmp_path), "--name", "both"]) == 0
    (dense,) = json.loads((tmp_path / "both.json").read_text())["table"]
    assert (dense["wiki_next_acc"], dense["rt_sentiment_acc"]) == (0.7, 0.53)
