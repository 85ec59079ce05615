"""Perplexity over non-overlapping windows, the protocol of the SparseGPT and Wanda papers.

The split's text is tokenised once, cut into windows of ``seqlen`` tokens from the start
(the remainder that does not fill a window is dropped), and
ppl = exp(mean negative log-likelihood of every predicted token), i.e. ``seqlen - 1``
predictions per window, all averaged together.

Speed: the vocabulary projection of a small model is a large share of its forward pass
and its float32 log-softmax is the largest tensor, so the loss is computed from the final
hidden states in chunks of positions through the output layer; no (batch, seqlen, vocab)
float32 tensor is ever built.
"""
from __future__ import annotations

import math
import sys
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from ..data import sequential_windows, tokenize_corpus
from ..errors import LLMPruneError
from .corpora import corpus_key, load_eval_text, protocol_max_windows

# Positions per pass through the output layer: 2048 x 49k vocab x 4 bytes is ~400 MB for
# SmolLM2, small next to the model, large enough to keep the matmul efficient.
LOGIT_CHUNK = 2048

_TOKEN_CACHE: dict[tuple, torch.Tensor] = {}
# Models whose hidden-state path was checked against their own forward (see _check_fast_path).
_FAST_PATH_OK: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


@dataclass
class PerplexityResult:
    """One perplexity measurement; ``tokens`` counts every token fed, ``predicted`` those scored."""

    ppl: float
    nll: float
    tokens: int
    windows: int
    seconds: float
    tokens_per_s: float
    source: str = "wikipedia"
    split: str = "test"
    seqlen: int = 512
    predicted: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def tokenizer_key(tokenizer) -> tuple:
    # name_or_path alone is not enough: two tokenizers loaded from different folders can
    # share a name; vocabulary size and class separate the cases that matter.
    return (getattr(tokenizer, "name_or_path", ""), type(tokenizer).__name__, len(tokenizer))


def corpus_tokens(tokenizer, source: str = "wikipedia", split: str = "test") -> torch.Tensor:
    """The tokenised evaluation text, cached in memory so before/after evaluations tokenise once."""
    key = (tokenizer_key(tokenizer), corpus_key(source, split))
    cached = _TOKEN_CACHE.get(key)
    if cached is None:
        cached = tokenize_corpus(tokenizer, load_eval_text(source, split))
        _TOKEN_CACHE[key] = cached
    return cached


def eval_windows(
    tokenizer, source: str = "wikipedia", split: str = "test", seqlen: int = 512, max_windows: int | None = None
) -> torch.Tensor:
    """(windows, seqlen) token ids for ``source``; C4 keeps the papers' 256-window cap by default."""
    if seqlen < 2:
        raise LLMPruneError("seqlen must be at least 2 to predict a token")
    if max_windows is None:
        max_windows = protocol_max_windows(source)
    if max_windows is not None and max_windows < 1:
        raise LLMPruneError("the number of evaluation windows must be positive")
    return sequential_windows(corpus_tokens(tokenizer, source, split), seqlen, max_windows)


def _base_and_head(model):
    """The decoder without its output layer, and the output layer; None when not separable."""
    base = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or base is model or head is None:
        return None
    return base, head


def _hidden_logits(model, input_ids: torch.Tensor):
    """Final hidden states and the output layer, or (None, None) when the model has no split path."""
    parts = _base_and_head(model)
    if parts is None:
        return None, None
    base, head = parts
    hidden = base(input_ids=input_ids, use_cache=False).last_hidden_state
    return hidden, head


def _check_fast_path(model, sample: torch.Tensor) -> bool:
    """True when base-model hidden states through the output layer reproduce the model's logits.

    Some families post-process logits (soft-capping, scaling); checking once per model on a
    few tokens is cheaper than keeping a table of them, and falls back to the full forward.
    """
    if model in _FAST_PATH_OK:
        return _FAST_PATH_OK[model]
    ok = False
    try:
        hidden, head = _hidden_logits(model, sample)
        if hidden is not None:
            fast = head(hidden).float()
            full = model(input_ids=sample, use_cache=False).logits.float()
            scale = full.abs().max().clamp_min(1.0)
            ok = fast.shape == full.shape and bool(((fast - full).abs().max() / scale) < 1e-3)
    except (TypeError, AttributeError, ValueError):
        ok = False
    _FAST_PATH_OK[model] = ok
    return ok


def _batch_nll_sum(model, batch: torch.Tensor, fast: bool) -> float:
    """Sum of the negative log-likelihoods of tokens 1..seqlen-1 of every window in ``batch``."""
    targets = batch[:, 1:]
    total = torch.zeros((), dtype=torch.float64)
    if fast:
        hidden, head = _hidden_logits(model, batch)
        hidden = hidden[:, :-1, :].reshape(-1, hidden.shape[-1])
        flat_targets = targets.reshape(-1)
        for start in range(0, hidden.shape[0], LOGIT_CHUNK):
            logits = head(hidden[start : start + LOGIT_CHUNK]).float()
            loss = F.cross_entropy(logits, flat_targets[start : start + LOGIT_CHUNK], reduction="sum")
            total += loss.double().cpu()
        return float(total)
    # Fallback: one window at a time so the full float32 logits stay at one window's size.
    for row in range(batch.shape[0]):
        logits = model(input_ids=batch[row : row + 1], use_cache=False).logits[0, :-1].float()
        total += F.cross_entropy(logits, targets[row], reduction="sum").double().cpu()
    return float(total)


@contextmanager
def evaluation_device(model, device: str | None) -> Iterator[None]:
    """Score ``model`` on ``device`` and put it back where it was afterwards.

    The pruning engine keeps a model on the CPU between blocks (only the block being pruned sits on
    the accelerator), so without this a ``--device cuda`` run would measure its perplexity on the CPU.
    A model that does not fit on the device is scored where it is, with one line saying so.
    """
    home = next(model.parameters()).device
    if device is None or home.type in ("meta", torch.device(device).type):
        yield
        return
    needed = sum(p.numel() * p.element_size() for p in model.parameters())
    free = torch.cuda.mem_get_info(device)[0] if torch.device(device).type == "cuda" else needed
    if needed > 0.8 * free:  # leave room for the activations; a 70B streamed run stays on the host
        print(f"llmprune: the model ({needed / 2**30:.1f} GiB) does not fit on {device} for evaluation "
              f"({free / 2**30:.1f} GiB free); evaluating on {home}", file=sys.stderr)
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to(home)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@torch.no_grad()
def perplexity_of_windows(
    model, windows: torch.Tensor, batch_size: int = 4, progress: bool = True, desc: str = "perplexity"
) -> tuple[float, float]:
    """(mean NLL per predicted token, seconds) of ``windows`` (a (n, seqlen) id tensor)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise LLMPruneError("batch size must be positive")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    try:
        fast = _check_fast_path(model, windows[:1, : min(16, windows.shape[1])].to(device))
        total = 0.0
        bar = tqdm(total=windows.shape[0], desc=desc, unit="win", disable=not progress, leave=False)
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size].to(device)
            total += _batch_nll_sum(model, batch, fast)
            bar.update(batch.shape[0])
        bar.close()
    finally:
        model.train(was_training)
    predicted = windows.shape[0] * (windows.shape[1] - 1)
    return total / predicted, time.perf_counter() - started


def perplexity(
    model,
    tokenizer,
    source: str = "wikipedia",
    split: str = "test",
    seqlen: int = 512,
    max_windows: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``source`` ('wikipedia', 'wikitext2', 'c4', 'ptb', a .txt/.jsonl file).

    ``max_windows`` limits the windows taken from the start of the split (default: all).
    """
    windows = eval_windows(tokenizer, source, split, seqlen, max_windows)
    nll, seconds = perplexity_of_windows(model, windows, batch_size, progress, desc=f"ppl {source}")
    tokens = windows.numel()
    return PerplexityResult(
        ppl=math.exp(nll) if nll < 700 else float("inf"),
        nll=nll,
        tokens=tokens,
        windows=windows.shape[0],
        seconds=seconds,
        tokens_per_s=tokens / seconds if seconds > 0 else float("inf"),
        source=source,
        split=split,
        seqlen=seqlen,
        predicted=windows.shape[0] * (seqlen - 1),
    )
