"""The methods behave as published on the real bundled SmolLM2-135M (Llama architecture).

Small calibration (16 x 256 tokens) and a slice of the Wikipedia test split keep this to
a few minutes on 2 cores; the gaps between methods are large, so the slice is enough.
"""
import pytest
import torch

import llmprune
from llmprune.calibration import calibration_batch
from llmprune.evaluate.perplexity import perplexity

pytestmark = pytest.mark.real
EVAL_WINDOWS = 8


@pytest.fixture(scope="module")
def smollm():
    torch.set_num_threads(2)
    model, tokenizer = llmprune.load_model("llama")
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    ids = calibration_batch(tokenizer, "wikipedia", nsamples=16, seqlen=256, seed=0)
    results = {"dense": perplexity(model, tokenizer, max_windows=EVAL_WINDOWS, progress=False).ppl}

    def pruned_ppl(method, **target):
        model.load_state_dict(original)
        llmprune.prune(model, tokenizer, method=method, calibration_ids=ids, progress=False, **target)
        return perplexity(model, tokenizer, max_windows=EVAL_WINDOWS, progress=False).ppl

    yield results, pruned_ppl
    torch.set_num_threads(1)


def test_bundled_model_is_a_working_llama(smollm):
    results, _ = smollm
    assert 5 < results["dense"] < 30, results


def test_wanda_and_sparsegpt_far_better_than_magnitude_at_half_sparsity(smollm):
    results, pruned_ppl = smollm
    magnitude = pruned_ppl("magnitude", sparsity=0.5)
    wanda = pruned_ppl("wanda", sparsity=0.5)
    sparsegpt = pruned_ppl("sparsegpt", sparsity=0.5)
    print(f"dense {results['dense']:.1f} magnitude {magnitude:.1f} wanda {wanda:.1f} sparsegpt {sparsegpt:.1f}")
    assert results["dense"] < sparsegpt < wanda
    assert wanda < magnitude / 3 and sparsegpt < magnitude / 3


def test_sparsegpt_beats_wanda_at_2_4(smollm):
    _, pruned_ppl = smollm
    wanda = pruned_ppl("wanda", pattern="2:4")
    sparsegpt = pruned_ppl("sparsegpt", pattern="2:4")
    print(f"2:4 wanda {wanda:.1f} sparsegpt {sparsegpt:.1f}")
    assert sparsegpt < wanda


def test_admm_clearly_beats_sparsegpt_at_70_percent(smollm):
    # Measured with this calibration (16 x 256) and 16 test windows: ADMM 95.5 against SparseGPT 157.9
    # (eval/results/admm.md), 0.60x; the margin asked here, 0.8x, leaves room for the 8-window slice.
    _, pruned_ppl = smollm
    sparsegpt = pruned_ppl("sparsegpt", sparsity=0.7)
    admm = pruned_ppl("admm", sparsity=0.7)
    print(f"70% sparsegpt {sparsegpt:.1f} admm {admm:.1f}")
    assert admm < 0.8 * sparsegpt
