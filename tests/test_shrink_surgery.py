"""Shrinking attention heads, against computations done here: the re-fitted o_proj is the least-squares fit of
the dense outputs from the kept heads' inputs (torch.linalg.lstsq on the recorded inputs), and removing a
whole key/value group leaves a config that says so, so the folder reloads with stock transformers."""
from __future__ import annotations

import copy

import torch

from llmprune.structured import shrink
from tests.conftest import random_calibration
from tests.test_shrink import build, logits, save_and_reload

CALIBRATION = random_calibration(nsamples=8, seqlen=16)
HEAD_DIM = 16  # the tiny llama: hidden 64, 4 query heads in 2 key/value groups
# At this ratio the plan removes one whole key/value group (2 query heads and their k/v rows) per block.
WHOLE_GROUP = dict(ratio=0.17, units="heads")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@torch.no_grad()
def test_o_proj_after_removing_heads_is_the_least_squares_fit_of_the_dense_outputs():
    model = build("llama", layers=3)
    dense = copy.deepcopy(model)
    report = shrink(model, damp=0.0, calibration_ids=CALIBRATION, progress=False, device="cpu", **WHOLE_GROUP)
    removed = report["blocks"]["0"]["query_heads_removed"]
    kept = [h for h in range(4) if h not in removed]
    columns = [h * HEAD_DIM + i for h in kept for i in range(HEAD_DIM)]
    # Block 0's inputs are the embeddings in both models, so its o_proj inputs there are the dense ones,
    # restricted to the kept heads' columns.
    seen = []
    o_proj = dense.model.layers[0].self_attn.o_proj
    handle = o_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    dense(CALIBRATION)
    handle.remove()
    x = seen[0].double()
    wanted = x @ o_proj.weight.double().t()  # the dense layer's outputs
    fit = torch.linalg.lstsq(x[:, columns], wanted).solution.t()
    refit = model.model.layers[0].self_attn.o_proj.weight
    assert refit.shape == (64, len(columns))

    def output_error(weight):
        return relative(x[:, columns] @ weight.double().t(), wanted)

    # Compared in output space: the fit is unique there, while along X_K's weakest directions float32
    # statistics move the weights without changing the outputs. Optimal means no worse than lstsq by
    # more than a thousandth of what the re-fit gains over dropping the columns alone.
    best, dropped = output_error(fit), output_error(o_proj.weight[:, columns])
    assert output_error(refit) - best < 1e-3 * (dropped - best), (output_error(refit), best, dropped)

def test_removing_a_whole_key_value_group_edits_the_config_and_the_folder_reloads(tmp_path):
    model = build("llama", layers=3)
    report = shrink(model, calibration_ids=CALIBRATION, progress=False, device="cpu", **WHOLE_GROUP)
    assert report["kept"]["num_key_value_heads"] == 1 and report["kept"]["num_attention_heads"] == 2
    for block in model.model.layers:
        assert block.self_attn.k_proj.weight.shape[0] == model.config.num_key_value_heads * HEAD_DIM
        assert block.self_attn.q_proj.weight.shape[0] == model.config.num_attention_heads * HEAD_DIM
    reloaded = save_and_reload(model, tmp_path / "shrunk")
    assert reloaded.config.num_key_value_heads == 1
    torch.testing.assert_close(logits(reloaded, CALIBRATION), logits(model, CALIBRATION))
