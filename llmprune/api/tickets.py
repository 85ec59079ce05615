"""The API functions of the lottery-ticket commands (imp, lth, glue); the work is in ``llmprune.tickets``."""
from __future__ import annotations

import json

from ..errors import LLMPruneError
from ..io.atomic import write_file_atomically


def find_bert_tickets(options) -> dict:
    """``llmprune imp``: lottery tickets in a pretrained BERT-family encoder (an ``IMPOptions``); the report."""
    from ..tickets.bert.bert_domain import run_imp

    return run_imp(options)


def find_tickets_from_scratch(options) -> dict:
    """``llmprune lth``: lottery tickets of networks trained from scratch (an ``LTHOptions``); the report."""
    from ..tickets.scratch.vision_domain import run_lth

    return run_lth(options)


def score_classifier(model_spec: str, task_spec: str, eval_file: str | None = None, max_eval_samples: int | None = None,
                     max_length: int = 128, batch_size: int = 128, json_path: str | None = None) -> dict:
    """``llmprune glue``: a saved classifier's official metrics on a task's validation split(s), also written
    (atomically) to ``json_path`` when given."""
    from ..tickets.bert.encoder import load_classifier
    from ..tickets.bert.features import Encoded
    from ..tickets.bert.text_tasks import load_task, subsample
    from ..tickets.bert.fine_tuning import evaluate

    task = load_task(task_spec, eval_file)
    model, tokenizer, _ = load_classifier(model_spec)
    if model.config.num_labels != task.num_labels:
        raise LLMPruneError(f"{model_spec} has a {model.config.num_labels}-label head but {task.name} "
                            f"has {task.num_labels} labels")
    evals = {split: Encoded(tokenizer, subsample(ex, max_eval_samples), max_length, task.is_regression)
             for split, ex in task.eval_sets.items()}
    metrics = evaluate(model, evals, task.metric, task.is_regression, batch_size)
    result = {"model": model_spec, "task": task.name, "examples": {s: len(d) for s, d in evals.items()}, "metrics": metrics}
    if json_path:
        write_file_atomically(json_path, json.dumps(result, indent=2) + "\n")
    return result
