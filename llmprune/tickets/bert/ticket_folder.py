"""Saving the winning ticket: the IMP mask over the rewind weights, as a model folder.

The folder holds the subnetwork BEFORE fine-tuning (mask + pretrained values, the classifier
head at its initial values): that is the lottery ticket, which the report shows trains to the
listed metric. It goes through the project's writer, in its sparse format when the writer
offers one.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from ...io.writer import save_pruned_model
from ..ticket_masks import Masks, apply_masks


def writer_supports_sparse() -> bool:
    return "save_format" in inspect.signature(save_pruned_model).parameters


def save_ticket(model, tokenizer, rewind_state: dict, masks: Masks, folder: Path, report: dict,
                overwrite: bool = True) -> Path:
    model.load_state_dict(rewind_state)
    apply_masks(model, masks)
    model.cpu()
    extra = {"save_format": "sparse"} if writer_supports_sparse() else {}
    # the sparse writer compresses the layers the report names; BERT's pooler is not inside
    # the blocks it would pick by default
    layers = {name.removesuffix(".weight"): {"sparsity": 1 - float(m.float().mean())} for name, m in masks.items()}
    total = 1 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    report = dict(report, save_format=extra.get("save_format", "dense"), layers=layers, total_sparsity=total)
    return save_pruned_model(model, tokenizer, folder, report, overwrite=overwrite, **extra)
