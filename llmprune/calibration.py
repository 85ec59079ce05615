"""Calibration windows for a pruning run, split into the chunks fed through each block per pass."""
from __future__ import annotations

import weakref

import torch
from torch import nn

from .anatomy import model_max_length
from .data import calibration_windows, load_text, tokenize_corpus
from .errors import LLMPruneError
from .process import return_freed_memory

# Calibration batches above this many activation bytes per block are split into chunks
# (two passes per block) instead of one fused pass.
SINGLE_PASS_ACTIVATION_BUDGET = 6 * 2**30
# Calibration text is tokenised in pieces of this many characters (bounded memory; see tokenize_corpus).
CALIBRATION_PIECE_CHARS = 200_000


class CalibrationText:
    """A calibration source's train split, read once: a job reads it before the model loads (a bad source
    fails before any work) and draws every window from this one copy, tokenised once per tokenizer
    (``--allocation auto``'s held-out windows too). The token ids of the bundled corpora are about 8 MB."""

    def __init__(self, source: str):
        self.source = source
        self.text = load_text(source, split="train")
        self._tokens: tuple[weakref.ref, torch.Tensor] | None = None

    def tokens(self, tokenizer) -> torch.Tensor:
        # A weak reference: the cache must not keep a tokenizer alive that its owner has let go of.
        if self._tokens is None or self._tokens[0]() is not tokenizer:
            self._tokens = (weakref.ref(tokenizer), tokenize_corpus(tokenizer, self.text, piece_chars=CALIBRATION_PIECE_CHARS))
        return self._tokens[1]


def calibration_batch(tokenizer, source: str | CalibrationText = "wikipedia", nsamples: int = 128, seqlen: int = 2048,
                      seed: int = 0) -> torch.Tensor:
    """``nsamples`` x ``seqlen`` token windows at random offsets in the source's train split."""
    text = source if isinstance(source, CalibrationText) else CalibrationText(source)
    return calibration_windows(text.tokens(tokenizer), nsamples, seqlen, seed)


def model_calibration_batch(model: nn.Module, tokenizer, source: str | CalibrationText, nsamples: int, seqlen: int,
                            seed: int) -> torch.Tensor:
    """``calibration_batch`` with ``seqlen`` capped at the model's limit."""
    if tokenizer is None:
        raise LLMPruneError("a tokenizer is needed to build calibration windows")
    limit = model_max_length(model)
    ids = calibration_batch(tokenizer, source, nsamples, min(seqlen, limit) if limit else seqlen, seed)
    return_freed_memory()
    return ids


def chunk_count(model: nn.Module, nsamples: int, seqlen: int, batch_size: int | None) -> int:
    if batch_size:
        return -(-nsamples // batch_size)
    config = model.config
    width = max(getattr(config, "intermediate_size", 0) or 0, getattr(config, "hidden_size", 0) or 0, 1)
    # A block holds a handful of activations of the widest size at once.
    per_sample = seqlen * width * 4 * 6
    return max(1, -(-nsamples * per_sample // SINGLE_PASS_ACTIVATION_BUDGET))


def calibration_chunks(model: nn.Module, tokenizer, source: str | CalibrationText, nsamples: int, seqlen: int, seed: int,
                       batch_size: int | None, calibration_ids: torch.Tensor | None = None) -> tuple[list[torch.Tensor], int, int]:
    """(chunks, nsamples, seqlen): the calibration windows, split into the chunks fed per pass.

    ``seqlen`` is capped at the model's limit; given ``calibration_ids`` set both sizes.
    """
    if calibration_ids is None:
        calibration_ids = model_calibration_batch(model, tokenizer, source, nsamples, seqlen, seed)
    nsamples, seqlen = calibration_ids.shape
    count = chunk_count(model, nsamples, seqlen, batch_size)
    return list(torch.tensor_split(calibration_ids, count)), nsamples, seqlen
