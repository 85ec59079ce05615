"""The public Python API: every CLI command calls one of these functions and does only parsing and printing.

    model, tokenizer = llmprune.load_model("llama")
    report = llmprune.prune(model, tokenizer, method="wanda", sparsity=0.5)
    llmprune.save_pretrained(model, tokenizer, "out/llama-wanda-50", report)
    report = llmprune.prune_folder("big-model", "out/big", method="wanda", sparsity=0.5)  # streamed from disk

``library`` (load, prune, prune a folder from disk, save), ``job`` (the job shell ``run_job`` that ``run_prune`` and ``run_shrink``
share), ``build`` (the engine objects of a job's options), ``commands`` (eval, inspect, decompress,
convert, push) and ``tickets`` (imp, lth, glue). Names resolve on first use, so a command imports only
what it runs.
"""
from importlib import import_module

_NAMES = {
    "load_model": "library", "prune": "library", "prune_folder": "library", "save_pretrained": "library",
    "run_job": "job", "Step": "job", "run_prune": "job", "run_shrink": "job",
    "build": "build", "PruneParts": "build",
    "evaluate_model": "commands", "inspect_model": "commands", "decompress": "commands", "convert": "commands",
    "push": "commands",
    "find_bert_tickets": "tickets", "find_tickets_from_scratch": "tickets", "score_classifier": "tickets",
    "shrink": "..structured.run",
}
__all__ = list(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        module = _NAMES[name]
        value = getattr(import_module(module if module.startswith("..") else f".{module}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llmprune.api' has no attribute '{name}'")
