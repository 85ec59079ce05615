"""llmprune: post-training pruning for large language models.

    import llmprune
    model, tokenizer = llmprune.load_model("llama")
    report = llmprune.prune(model, tokenizer, method="wanda", sparsity=0.5)
    llmprune.save_pretrained(model, tokenizer, "llama-wanda-50", report)
"""
__version__ = "0.1.0"

from .api import load_model, prune, save_pretrained  # noqa: E402
from .errors import LLMPruneError  # noqa: E402
from .io.loading import load_pretrained  # noqa: E402

__all__ = ["LLMPruneError", "load_model", "load_pretrained", "prune", "save_pretrained", "__version__"]
