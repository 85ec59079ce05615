"""Fine-tuning a classifier under a fixed mask, and scoring it.

A plain loop driven by ``accelerate`` (devices, multi-GPU and mixed precision come from
it). The mask is re-applied after EVERY optimiser step: AdamW's moments and weight decay
would otherwise move pruned weights off zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .features import Encoded, eval_loader, train_loader
from ..ticket_masks import Masks, apply_masks
from .task_metrics import compute_metrics


@dataclass
class TrainSettings:
    epochs: float = 3.0
    lr: float = 2e-5
    batch_size: int = 32
    weight_decay: float = 0.0
    precision: str = "no"  # accelerate's mixed_precision: no, bf16, fp16
    device: str = "auto"
    progress: bool = True


def _accelerator(settings: TrainSettings):
    from accelerate import Accelerator

    return Accelerator(mixed_precision=settings.precision, cpu=settings.device == "cpu")


def fine_tune(model, data: Encoded, settings: TrainSettings, masks: Masks | None, seed: int,
              on_step: Callable[[int], None] | None = None, desc: str = "train") -> int:
    """Train ``model`` in place for ``settings.epochs`` epochs; returns the number of optimiser steps.

    ``on_step(step)`` runs after each step (the mask already applied), e.g. to capture the
    weights for late rewinding. Dropout and data order come from ``seed``, so the same job
    run twice (or resumed) trains identically.
    """
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    accelerator = _accelerator(settings)
    loader = train_loader(data, settings.batch_size, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total = max(1, int(round(settings.epochs * len(loader))))
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, total)
    if masks is not None:
        apply_masks(model, masks)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    step, epoch = 0, 0
    while step < total:
        epoch += 1
        bar = tqdm(loader, desc=f"{desc} epoch {epoch}", leave=False, disable=not settings.progress,
                   total=min(len(loader), total - step))
        for batch in bar:
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if masks is not None:
                apply_masks(accelerator.unwrap_model(model), masks)
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if on_step is not None:
                on_step(step)
            if step >= total:
                break
        bar.close()
    # drop the mixed-precision forward wrapper so the next job does not stack another one
    accelerator.unwrap_model(model, keep_fp32_wrapper=False).eval()
    # (no accelerator.free_memory(): its gc.collect costs about a second per job on CPU and
    # the optimiser state goes away with this frame anyway)
    return step


@torch.no_grad()
def predict(model, data: Encoded, batch_size: int = 128, regression: bool = False) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for batch in eval_loader(data, batch_size):
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        logits = model(**batch).logits.float()
        outputs.append(logits.squeeze(-1) if regression else logits.argmax(-1))
    return torch.cat(outputs).cpu().numpy()


def evaluate(model, eval_sets: dict[str, Encoded], family: str, regression: bool = False,
             batch_size: int = 128) -> dict[str, float]:
    """Metrics on every evaluation split; the first split's are unprefixed (the primary)."""
    results = {}
    for index, (split, data) in enumerate(eval_sets.items()):
        scores = compute_metrics(family, predict(model, data, batch_size, regression), data.labels.numpy())
        prefix = "" if index == 0 else split.removeprefix("validation_") + "_"
        results.update({prefix + key: value for key, value in scores.items()})
    return results
