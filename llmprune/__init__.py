"""llmprune: post-training pruning for large language models.

    import llmprune
    model, tokenizer = llmprune.load_model("llama")
    report = llmprune.prune(model, tokenizer, method="wanda", sparsity=0.5)
    llmprune.save_pretrained(model, tokenizer, "llama-wanda-50", report)
    model = llmprune.load_pretrained("llama-wanda-50")   # dense or sparse folders
"""
from importlib import import_module

__version__ = "0.1.0"

# Resolved on first use, so `llmprune --help` and `import llmprune.cli` need no torch import.
_PUBLIC = {
    "load_model": "api",
    "prune": "api",
    "prune_folder": "api",
    "shrink": "api",
    "save_pretrained": "api",
    "PruneOptions": "options",
    "RunOptions": "options",
    "load_pretrained": "io.loading",
    "LLMPruneError": "errors",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llmprune' has no attribute '{name}'")
