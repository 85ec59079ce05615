"""The lm-eval harness on an in-memory model: ``HFLM(pretrained=model, tokenizer=tok)``, no re-save.

Task names are any lm-eval knows plus the offline tasks of ``eval/tasks`` (``wiki_next``,
``wiki_lastword``, ``wiki_topic``, ``rt_sentiment``, ``wiki_ppl``, or the tag ``llmprune_offline``
for all of them).
"""
from __future__ import annotations

import difflib
import logging
import time
from functools import lru_cache

from ..errors import LLMPruneError
from .corpora import hub_offline, hub_reachable
from .tasks import OFFLINE_TASKS, task_data_files, tasks_dir

OFFLINE_TAG = "llmprune_offline"
# lm-eval's default of 100,000 bootstrap resamples for perplexity-style stderrs takes minutes on
# CPU; 1,000 gives the same error bar to two digits.
DEFAULT_BOOTSTRAP = 1000


def parse_tasks(tasks: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b'] (order kept, duplicates dropped)."""
    if not tasks:
        return []
    items = tasks.split(",") if isinstance(tasks, str) else [t for part in tasks for t in str(part).split(",")]
    return list(dict.fromkeys(t.strip() for t in items if t.strip()))


def _offline_only(names: list[str]) -> bool:
    return all(name in OFFLINE_TASKS or name == OFFLINE_TAG for name in names)


@lru_cache(maxsize=2)
def task_manager(include_defaults: bool = True):
    """lm-eval's task index with ``eval/tasks`` added; indexing lm-eval's own ~15k tasks takes
    seconds, so offline-only runs skip it."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_dir()), include_defaults=include_defaults)


def check_task_names(names: list[str], manager) -> None:
    known = set(manager.all_tasks)
    unknown = [name for name in names if name not in known]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hints.append(f"'{name}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise LLMPruneError(
            f"unknown lm-eval task {', '.join(hints)}; offline tasks: {', '.join(OFFLINE_TASKS)}"
        )


def _data_unavailable_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "this task's data cannot be fetched", not a bug."""
    errors: list[type[BaseException]] = [ConnectionError, FileNotFoundError, TimeoutError]
    try:
        from datasets.exceptions import DatasetNotFoundError

        errors.append(DatasetNotFoundError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        errors += [HfHubHTTPError, LocalEntryNotFoundError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _metrics_of(task_results: dict) -> dict:
    """{'acc,none': .., 'acc_stderr,none': .., 'alias': ..} -> {'acc': .., 'acc_stderr': ..}."""
    out = {}
    for key, value in task_results.items():
        # sample_len duplicates the 'samples' count added by run_tasks
        if key == "alias" or not isinstance(value, (int, float)) or key.startswith("sample_len"):
            continue
        metric, _, filter_name = key.partition(",")
        name = metric if filter_name in ("", "none") else f"{metric}[{filter_name}]"
        out[name] = float(value)
    return out


def prepare_tasks(tasks: str | list[str], num_fewshot: int | None = None, limit: int | float | None = None):
    """Check the task names and options, and that hub tasks can reach their data; (names, manager).

    Separate from ``run_tasks`` so callers can fail before minutes of other evaluation.
    """
    names = parse_tasks(tasks)
    if not names:
        raise LLMPruneError("no lm-eval tasks given")
    if num_fewshot is not None and num_fewshot < 0:
        raise LLMPruneError("--num-fewshot must be 0 or more")
    if limit is not None and limit <= 0:
        raise LLMPruneError("--limit must be positive")
    offline_only = _offline_only(names)
    manager = task_manager(include_defaults=not offline_only)
    check_task_names(names, manager)
    if not offline_only and not hub_offline() and not hub_reachable():
        hub_tasks = [n for n in names if n not in OFFLINE_TASKS and n != OFFLINE_TAG]
        raise LLMPruneError(
            f"task(s) {', '.join(hub_tasks)} need their data from the Hugging Face hub, which is not reachable; "
            f"offline tasks: {', '.join(OFFLINE_TASKS)}"
        )
    for name in names:  # generate the offline tasks' data now (a fraction of a second, once)
        for task in OFFLINE_TASKS if name == OFFLINE_TAG else [name] if name in OFFLINE_TASKS else []:
            task_data_files(task)
    return names, manager


def lm_eval_limit(limit: int | float | None) -> int | float | None:
    """lm-eval reads a float as a fraction of each task's documents only below 1: 200.0 becomes 200."""
    return int(limit) if limit is not None and limit >= 1 else limit


def run_tasks(
    model,
    tokenizer,
    tasks: str | list[str],
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 4,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    verbose: bool = False,
) -> dict:
    """Run lm-eval ``tasks`` on the in-memory ``model``; returns {task: {metric: value}, ...}.

    ``limit``: at most this many documents per task (a float in (0, 1) is a fraction).
    """
    limit = lm_eval_limit(limit)
    names, manager = prepare_tasks(tasks, num_fewshot, limit)

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    if not verbose:  # lm-eval logs every step at INFO/WARNING; the table is what users read
        for name in ("lm-eval", "lm_eval"):
            logging.getLogger(name).setLevel(logging.ERROR)
    device = next(model.parameters()).device
    was_training = model.training
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
    started = time.perf_counter()
    try:
        output = simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    except _data_unavailable_errors() as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise LLMPruneError(
            f"cannot load the data of task(s) {', '.join(names)}: {type(exc).__name__} {first}".rstrip()
            + f"; offline tasks: {', '.join(OFFLINE_TASKS)}"
        ) from None
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - started
    return {"tasks": _task_results(output or {}), "seconds": seconds, "limit": limit, "batch_size": batch_size}


def _task_results(output: dict) -> dict:
    """lm-eval's output -> {task: {metric: value, "samples": n, "num_fewshot": k}}."""
    results = {task: _metrics_of(values) for task, values in output.get("results", {}).items()}
    for task, counts in output.get("n-samples", {}).items():
        if task in results:
            results[task]["samples"] = int(counts.get("effective", counts.get("original", 0)))
    for task, config in output.get("configs", {}).items():
        if task in results and "num_fewshot" in config:
            results[task]["num_fewshot"] = int(config["num_fewshot"] or 0)
    return results
