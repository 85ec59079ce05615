"""Evaluation: perplexity (bundled Wikipedia, WikiText-2/PTB/C4, local files) and the lm-eval harness.

``evaluate(model, tokenizer, ppl=..., tasks=...)`` is the one call; the parts are importable too.
lm-eval itself is imported only when tasks run.
"""
from .perplexity import PerplexityResult, perplexity
from .run import evaluate, format_table, read_results, write_results

__all__ = ["PerplexityResult", "evaluate", "format_table", "perplexity", "read_results", "write_results"]
