"""``custom_dataset`` hooks for the offline task YAMLs in this folder.

lm-eval resolves ``!function llmprune_tasks.NAME`` relative to the YAML, so these tasks work with
``lm_eval --include_path eval/tasks`` as well as through ``llmprune eval``. The data are generated
by llmprune (deterministically, into its cache dir) on first use.
"""
from llmprune.evaluate.tasks import load_task_dataset


def wiki_ppl(**metadata):
    return load_task_dataset("wiki_ppl", **metadata)


def rt_sentiment(**metadata):
    return load_task_dataset("rt_sentiment", **metadata)


def wiki_topic(**metadata):
    return load_task_dataset("wiki_topic", **metadata)


def wiki_next(**metadata):
    return load_task_dataset("wiki_next", **metadata)


def wiki_lastword(**metadata):
    return load_task_dataset("wiki_lastword", **metadata)


def code_next(**metadata):
    return load_task_dataset("code_next", **metadata)


def code_name(**metadata):
    return load_task_dataset("code_name", **metadata)
