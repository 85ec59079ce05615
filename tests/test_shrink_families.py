"""llmprune shrink on every dense family one-shot pruning handles, with heads shaped like real ones.

Each family is a tiny random model with 8 query heads over 2 key/value heads (head_dim given where
the family's attention reads it), 4 blocks. With the default units and with ``--units mlp,heads`` the
run either saves a folder that stock transformers reloads with the in-memory model's logits, or
refuses in one line before any block is touched.
"""
from __future__ import annotations

import json

import pytest
import torch
import transformers

from tests.conftest import random_calibration, tiny_tokenizer
from tests.test_shrink import instantiate, logits
from llmprune.cli import main
from llmprune.errors import LLMPruneError
from llmprune.structured import shrink
from llmprune.structured.checks import plan_error
from llmprune.structured.layouts import find_layout
from llmprune.structured.plan import RATIO_TOLERANCE, plan_shrink

SIZES = dict(vocab_size=128, hidden_size=64, num_hidden_layers=4, max_position_embeddings=256)
GQA = dict(num_attention_heads=8, num_key_value_heads=2, head_dim=16)  # 8 x 16 = 128 query channels on a width of 64
FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**SIZES, **GQA, intermediate_size=128),
    "mistral": lambda: transformers.MistralConfig(**SIZES, **GQA, intermediate_size=128),
    "qwen2": lambda: transformers.Qwen2Config(**SIZES, **GQA, intermediate_size=128),
    "qwen3": lambda: transformers.Qwen3Config(**SIZES, **GQA, intermediate_size=128),
    "gemma": lambda: transformers.GemmaConfig(**SIZES, **GQA, intermediate_size=128),
    "gemma2": lambda: transformers.Gemma2Config(**SIZES, **GQA, intermediate_size=128),
    "gemma3": lambda: transformers.Gemma3TextConfig(**SIZES, **GQA, intermediate_size=128, sliding_window=8),
    "olmo": lambda: transformers.OlmoConfig(**SIZES, **GQA, intermediate_size=128),
    "olmo2": lambda: transformers.Olmo2Config(**SIZES, **GQA, intermediate_size=128),
    "starcoder2": lambda: transformers.Starcoder2Config(**SIZES, **GQA, intermediate_size=128),
    "phi": lambda: transformers.PhiConfig(**SIZES, **GQA, intermediate_size=128),
    "phi3": lambda: transformers.Phi3Config(**SIZES, **GQA, intermediate_size=128, pad_token_id=0),
    # These attentions size a head as hidden_size // heads (no head_dim of their own).
    "stablelm": lambda: transformers.StableLmConfig(**SIZES, num_attention_heads=8, num_key_value_heads=2, intermediate_size=128),
    "falcon": lambda: transformers.FalconConfig(vocab_size=128, hidden_size=64, num_hidden_layers=4, num_attention_heads=8,
                                                num_kv_heads=2, new_decoder_architecture=True),
    "opt": lambda: transformers.OPTConfig(vocab_size=128, hidden_size=64, num_hidden_layers=4, num_attention_heads=8, ffn_dim=128,
                                          word_embed_proj_dim=64, max_position_embeddings=256),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=4, n_head=8, n_positions=256),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**SIZES, num_attention_heads=8, intermediate_size=128),
}
HEADS_REMOVABLE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "olmo", "olmo2", "starcoder2", "phi", "phi3"}
HEAD_SIZE_FROM_HIDDEN = set(FAMILIES) - HEADS_REMOVABLE


def build(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return instantiate(FAMILIES[family](), **overrides)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def run(model, units: str, ratio: float = 0.25):
    return shrink(model, ratio=ratio, units=units, multiple_of=8, calibration_ids=random_calibration(4, 16),
                  progress=False, device="cpu")


@pytest.mark.parametrize("units", ("auto", "mlp,heads"))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_dense_family_shrinks_to_a_folder_stock_transformers_reloads(family, units, tmp_path, capsys):
    from llmprune.api import save_pretrained

    model = build(family)
    before = sum(p.numel() for p in model.parameters())
    heads_before = model.config.num_attention_heads
    report = run(model, units)
    assert report["parameters"]["after"] < before
    assert abs(report["ratio_reached"] - 0.25) <= RATIO_TOLERANCE, report["ratio_reached"]
    out = capsys.readouterr().out
    if units == "mlp,heads":
        if family in HEADS_REMOVABLE:
            assert report["units"] == ["heads", "mlp"] and report["kept"]["num_attention_heads"] < heads_before
        else:  # one line says where the heads' share went; the MLP took it
            assert report["units"] == ["mlp"] and report["kept"]["num_attention_heads"] == heads_before
            assert out.count(f"heads cannot be removed from model type '{model.config.model_type}'") == 1
    save_pretrained(model, tiny_tokenizer(), tmp_path / family, report)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / family, attn_implementation="eager").eval()
    ids = random_calibration(2, 12, seed=3)
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), rtol=0, atol=1e-5)
    saved = json.loads((tmp_path / family / "config.json").read_text())
    if report["kept"]["num_attention_heads"] != heads_before:
        # the head size stays 16 while hidden_size // heads does not give it: written explicitly (GGUF export reads it)
        assert saved["head_dim"] == 16 and saved["num_attention_heads"] == report["kept"]["num_attention_heads"]
        assert saved["num_key_value_heads"] == report["kept"]["num_key_value_heads"]
        assert reloaded.config.num_attention_heads * 16 == find_layout(reloaded).attention.heads * 16


def test_heads_alone_are_refused_in_one_line_before_any_block_is_touched():
    for family in sorted(HEAD_SIZE_FROM_HIDDEN):
        model = build(family)
        weights = snapshot(model)
        with pytest.raises(LLMPruneError, match=f"heads cannot be removed from model type '{model.config.model_type}'") as info:
            run(model, "heads")
        assert "\n" not in str(info.value)
        assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())
        assert model.config.num_attention_heads == 8


def test_a_head_count_the_config_refuses_is_never_planned():
    model = build("llama")
    # Llama's config wants hidden_size (64) a multiple of the heads: 6 heads (3 per group) is refused ...
    error = plan_error(model, find_layout(model), 128, 6, 2, 0)
    assert error == "The hidden size (64) is not a multiple of the number of attention heads (6)."
    # ... so a ratio that 6 heads would suit best gets an accepted count, and the folder saves.
    layout, costs, plan = plan_shrink(model, 0.06, "heads", 8)
    assert plan.heads in (2, 4) and 64 % plan.heads == 0
    assert plan_error(model, layout, plan.intermediate, plan.heads, plan.kv_heads, 0) is None
    # A family that validates nothing of the kind (Mistral) may keep 6.
    assert plan_error(build("mistral"), find_layout(build("mistral")), 128, 6, 2, 0) is None


def test_cli_refusal_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "gpt2"
    build("gpt2").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["shrink", "--model", str(folder), "--units", "heads", "--ratio", "0.1", "--nsamples", "2", "--seqlen", "8",
                 "--output", str(out), "--no-progress", "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("llmprune: error: heads cannot be removed from model type 'gpt2'") and err.count("\n") == 1
    assert not out.exists()


def test_a_model_that_fails_its_own_forward_is_refused_before_any_work():
    # StableLM's rotary embedding reads head_dim from the config, its attention hidden_size // heads:
    # a config giving both differently makes the dense model itself fail.
    model = build("stablelm", head_dim=16)
    weights = snapshot(model)
    with pytest.raises(LLMPruneError, match="fails a forward pass before anything is removed") as info:
        run(model, "auto")
    assert "\n" not in str(info.value)
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())


@pytest.fixture(scope="module")
def wide_model():
    """Real-sized proportions (GQA 16 over 4, MLP 3x the width), 12 blocks: enough units for a close ratio."""
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=64, hidden_size=256, num_hidden_layers=12, num_attention_heads=16,
                                      num_key_value_heads=4, intermediate_size=768, max_position_embeddings=64)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("units", ("mlp", "mlp,heads", "mlp,blocks", "heads,blocks", "mlp,heads,blocks"))
@pytest.mark.parametrize("ratio", (0.1, 0.25, 0.4))
def test_reached_ratio_is_within_two_points_on_a_model_with_enough_units(wide_model, units, ratio):
    _, _, plan = plan_shrink(wide_model, ratio, units, 8)
    assert abs(plan.reached - ratio) <= RATIO_TOLERANCE, (units, ratio, plan)
    assert not plan.notes
    assert all(unit in plan.units for unit in units.split(","))


def test_shrunk_share_equals_the_reported_ratio():
    model = build("qwen3")
    report = run(model, "mlp,heads,blocks", ratio=0.4)
    after = report["parameters"]["blocks_after"] / report["parameters"]["blocks_before"]
    assert 1 - after == pytest.approx(report["ratio_reached"], abs=1e-5)


def test_mixture_of_experts_keeps_its_experts_and_says_so(tmp_path, capsys):
    torch.manual_seed(0)
    model = instantiate(transformers.MixtralConfig(**SIZES, **GQA, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2))
    weights = snapshot(model)
    with pytest.raises(LLMPruneError, match="the MLP of model type 'mixtral' cannot be shrunk: its MLP is a mixture of experts") as info:
        run(model, "mlp")
    assert "use --units heads,blocks" in str(info.value) and "\n" not in str(info.value)
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())
    capsys.readouterr()
    report = shrink(model, ratio=0.25, calibration_ids=random_calibration(4, 16), progress=False, device="cpu")
    assert report["units"] == ["blocks", "heads"] and report["removed_blocks"]
    assert report["kept"]["intermediate_size"] is None  # the experts keep their width
    out = capsys.readouterr().out
    assert out.count("its MLP is a mixture of experts") == 1 and out.count("no single output layer") == 1
    from llmprune.api import save_pretrained

    save_pretrained(model, tiny_tokenizer(), tmp_path / "moe", report)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "moe").eval()
    ids = random_calibration(2, 12, seed=3)
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), rtol=0, atol=1e-5)


def test_a_family_option_that_ties_a_norm_to_the_head_count_is_found_by_the_meta_model(capsys):
    # Phi with qk_layernorm sizes its query/key norms hidden_size // heads: no table says so, the meta model does.
    model = build("phi", qk_layernorm=True, head_dim=8)
    report = run(model, "mlp,heads")
    assert report["units"] == ["mlp"] and report["kept"]["num_attention_heads"] == 8
    note = capsys.readouterr().out
    assert "heads cannot be removed from model type 'phi'" in note and "_layernorm" in note
    assert abs(report["ratio_reached"] - 0.25) <= RATIO_TOLERANCE
