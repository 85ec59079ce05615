"""Distillation after shrinking: train every weight of the shrunk model so that its next-token
distributions match the dense model's on the calibration windows.

Block reconstruction fixes each block's own error, which after a least-squares re-fit is already small;
what costs a shrunk model its perplexity is those errors compounding over the depth. Matching the dense
model's output distribution (KL(dense || shrunk) per token, summed over the vocabulary, averaged over
tokens; the recovery step of LLM-Pruner and Minitron, here on the calibration tokens only) trains against
the compounded error directly. AdamW with a cosine schedule, in float32 whatever the model's dtype.

The last windows (as many as block reconstruction holds out) are never trained on:
the report gives the KL there before and after, so overfitting the calibration shows.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from ..reconstruct import held_out_count


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) of the next-token distributions."""
    student = torch.log_softmax(student_logits.float(), dim=-1).flatten(0, -2)
    teacher = torch.log_softmax(teacher_logits.float(), dim=-1).flatten(0, -2)
    return nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean")


@torch.no_grad()
def _mean_kl(student: nn.Module, teacher: nn.Module, windows: torch.Tensor, batch_size: int) -> float | None:
    if not len(windows):
        return None
    total = 0.0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        kl = token_kl(student(input_ids=batch, use_cache=False).logits, teacher(input_ids=batch, use_cache=False).logits)
        total += float(kl) * len(batch)
    return total / len(windows)


def distill(student: nn.Module, teacher: nn.Module, windows: torch.Tensor, steps: int, lr: float, batch_size: int,
            device, seed: int = 0, progress: bool = True) -> dict:
    """Train ``student`` in place for ``steps`` AdamW steps on micro-batches of ``windows`` (token ids,
    windows x tokens); returns the report entry."""
    started = time.perf_counter()
    held = held_out_count(len(windows))
    train, held_out = windows[: len(windows) - held], windows[len(windows) - held :]
    homes = {id(m): (next(m.parameters()).device, next(m.parameters()).dtype) for m in (student, teacher)}
    student.to(device=device, dtype=torch.float32)
    teacher.to(device)
    train, held_out = train.to(device), held_out.to(device)
    was_training = student.training
    student.eval()
    before = _mean_kl(student, teacher, held_out, batch_size)
    parameters = [p for p in student.parameters() if p.is_floating_point()]
    requires_grad = [p.requires_grad for p in parameters]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(steps, 1))))
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    bar = tqdm(range(steps), desc="distill", unit="step", disable=not progress)
    try:
        for _ in bar:
            if len(order) < batch_size:  # a fresh shuffle of the training windows when they run out
                order += torch.randperm(len(train), generator=generator).tolist()
            batch = train[torch.tensor(order[:batch_size], device=train.device)]
            del order[:batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for window in batch.split(1):  # one window at a time: the logits (tokens x vocabulary) dominate memory
                with torch.no_grad():
                    target = teacher(input_ids=window, use_cache=False).logits
                with torch.enable_grad():
                    loss = token_kl(student(input_ids=window, use_cache=False).logits, target) / len(batch)
                    loss.backward()  # gradients add up to those of the batch's mean KL (equal-length windows)
                loss_sum += float(loss.detach())
                del target, loss
            optimiser.step()
            schedule.step()
            losses.append(loss_sum)
            bar.set_postfix(kl=f"{losses[-1]:.4f}")
    finally:
        bar.close()
        for parameter, flag in zip(parameters, requires_grad):
            parameter.requires_grad_(flag)
            parameter.grad = None
    after = _mean_kl(student, teacher, held_out, batch_size)
    student.train(was_training)
    for model in (student, teacher):
        home_device, home_dtype = homes[id(model)]
        model.to(device=home_device, dtype=home_dtype)
    return {"steps": steps, "lr": lr, "batch_size": batch_size, "train_windows": len(train), "held_out_windows": len(held_out),
            "held_out_kl_before": before, "held_out_kl_after": after,
            "train_kl_first": losses[0] if losses else None, "train_kl_last": losses[-1] if losses else None,
            "seconds": round(time.perf_counter() - started, 3)}
