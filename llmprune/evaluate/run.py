"""``evaluate()``: perplexity on any number of corpora plus lm-eval tasks, one JSON-able dict.

    results = evaluate(model, tokenizer, ppl="wikipedia,wikitext2", tasks="rt_sentiment", limit=200)
    print(format_table(results)); write_results(results, "eval.json")
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from ..anatomy import model_max_length
from ..process import versions
from ..errors import LLMPruneError
from ..options import asks_perplexity
from .harness import DEFAULT_BOOTSTRAP, lm_eval_limit, parse_tasks, prepare_tasks, run_tasks
from .perplexity import eval_windows, perplexity

RESULTS_FORMAT = 1
DEFAULT_SEQLEN = 512


def parse_sources(ppl: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """'wikipedia,c4' or a list -> ['wikipedia', 'c4']; 'none' or '' -> []."""
    sources = parse_tasks(ppl)  # same comma/list rules as task names
    return sources if asks_perplexity(sources) else []


def _versions() -> dict[str, str]:
    found = versions()
    try:
        from importlib.metadata import version

        found["lm_eval"] = version("lm_eval")
    except Exception:  # metadata missing in odd installs; the rest still identifies the run
        pass
    return found


def _check_inputs(model, tokenizer, sources: list[str], task_names: list[str], seqlen: int | None, split: str,
                  max_windows: int | None, num_fewshot: int | None, limit: int | float | None) -> int:
    """The perplexity window length; every corpus is loaded and tokenised and every task checked before
    anything is scored, so a missing dataset or a misspelt task fails at once, not after minutes of perplexity."""
    if not sources and not task_names:
        raise LLMPruneError("nothing to evaluate: give perplexity sources (--ppl) and/or lm-eval tasks (--tasks)")
    context = model_max_length(model)
    if seqlen is None:  # the protocol's 512, or the whole context of a model with less
        seqlen = min(DEFAULT_SEQLEN, context or DEFAULT_SEQLEN)
    if sources and context is not None and seqlen > context:
        raise LLMPruneError(f"--seqlen {seqlen} exceeds the model's context of {context} tokens")
    for source in sources:
        eval_windows(tokenizer, source, split, seqlen, max_windows)
    if task_names:
        prepare_tasks(task_names, num_fewshot, limit)
    return seqlen


def evaluate(
    model,
    tokenizer,
    ppl: str | list[str] | None = "wikipedia",
    tasks: str | list[str] | None = None,
    seqlen: int | None = None,
    max_windows: int | None = None,
    batch_size: int = 4,
    split: str = "test",
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP,
    progress: bool = True,
) -> dict:
    """Perplexity on each of ``ppl`` (sources) and the lm-eval ``tasks``; returns a JSON-able dict.

    ``seqlen`` defaults to 512 tokens (the model's context when that is shorter).

    ``{"ppl": {source: PerplexityResult.as_dict()}, "lm_eval": {"tasks": {task: {metric: value}}, ...},
    "settings": {...}, "versions": {...}}``; sections that were not asked for are absent.
    """
    sources = parse_sources(ppl)
    task_names = parse_tasks(tasks)
    limit = lm_eval_limit(limit)
    seqlen = _check_inputs(model, tokenizer, sources, task_names, seqlen, split, max_windows, num_fewshot, limit)
    results: dict = {
        "format": RESULTS_FORMAT,
        "settings": {
            "seqlen": seqlen,
            "max_windows": max_windows,
            "batch_size": batch_size,
            "split": split,
            "num_fewshot": num_fewshot,
            "limit": limit,
        },
        "versions": _versions(),
    }
    # lm-eval first: a hub task that cannot load its data fails before minutes of perplexity.
    if task_names:
        results["lm_eval"] = run_tasks(
            model, tokenizer, task_names, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
            bootstrap_iters=bootstrap_iters,
        )
    if sources:
        results["ppl"] = {
            source: perplexity(model, tokenizer, source, split, seqlen, max_windows, batch_size, progress).as_dict()
            for source in sources
        }
    return results


def _number(value: float, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def format_table(results: dict) -> str:
    """The results as plain-text tables (perplexity, then lm-eval metrics)."""
    parts = []
    if results.get("ppl"):
        rows = [
            [source, r["split"], r["seqlen"], r["windows"], r["tokens"], _number(r["ppl"]), f"{r['tokens_per_s']:.0f}", f"{r['seconds']:.1f}"]
            for source, r in results["ppl"].items()
        ]
        parts.append(_table(["perplexity", "split", "seqlen", "windows", "tokens", "ppl", "tok/s", "s"], rows))
    if results.get("lm_eval", {}).get("tasks"):
        rows = []
        for task, metrics in results["lm_eval"]["tasks"].items():
            for name, value in metrics.items():
                if name.endswith("_stderr") or "_stderr[" in name or name in ("samples", "num_fewshot"):
                    continue
                stderr = metrics.get(f"{name}_stderr")
                rows.append([task, name, _number(value), "" if stderr is None else f"± {_number(stderr)}",
                             metrics.get("samples", ""), metrics.get("num_fewshot", "")])
        parts.append(_table(["lm-eval task", "metric", "value", "stderr", "n", "shots"], rows))
    return "\n\n".join(parts)


def write_results(results: dict, path: str | os.PathLike) -> Path:
    """Write ``results`` as JSON atomically (a reader never sees half a file)."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise LLMPruneError(f"--json {target} is a folder; give a file name")
    if not target.parent.is_dir():
        raise LLMPruneError(f"cannot write {target}: the folder {target.parent} does not exist")
    text = json.dumps(results, indent=2, sort_keys=False) + "\n"
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        raise LLMPruneError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def read_results(path: str | os.PathLike) -> dict:
    try:
        return json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LLMPruneError(f"cannot read results {path}: {exc}") from None
