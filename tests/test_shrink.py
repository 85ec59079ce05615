"""llmprune shrink: structured pruning to a smaller dense model that stock transformers loads."""
from __future__ import annotations

import json

import pytest
import torch
import transformers

from tests.conftest import FAMILIES, random_calibration, tiny_tokenizer
from llmprune.cli import main
from llmprune.errors import LLMPruneError
from llmprune.anatomy import find_blocks, weight_matrix
from llmprune.structured import shrink
from llmprune.structured.layouts import attention_sizes, find_layout
from llmprune.structured.plan import make_plan, unit_costs
from llmprune.structured.scores import InputStatistics, channel_scores, choose_units
from llmprune.structured.surgery import least_squares_refit, submodule

HEADS_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
ALL_FAMILIES = tuple(FAMILIES) + ("gemma3",)


def build(family: str, layers: int = 2, seed: int = 0, **overrides):
    """A tiny random model of ``family`` (gemma3 is built here: conftest has none)."""
    torch.manual_seed(seed)
    if family == "gemma3":
        config = transformers.Gemma3TextConfig(vocab_size=128, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                               num_key_value_heads=2, head_dim=16, intermediate_size=128,
                                               max_position_embeddings=256, sliding_window=8)
    else:
        base = FAMILIES[family]().to_dict()
        base.pop("layer_types", None)  # derived from the number of layers when the config is built
        base["n_layer" if "n_layer" in base else "num_hidden_layers"] = layers
        config = type(FAMILIES[family]())(**base)
    return instantiate(config, **overrides)


def instantiate(config, **overrides):
    """A random eager-attention model of ``config`` with ``overrides`` set on it, without a KV cache."""
    for key, value in overrides.items():
        setattr(config, key, value)
    config.use_cache = False
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def save_and_reload(model, folder):
    from llmprune.api import save_pretrained

    save_pretrained(model, tiny_tokenizer(), folder, {"method": "shrink"})
    return transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def check_config_matches_tensors(model, family: str) -> None:
    layout = find_layout(model)
    _, blocks = find_blocks(model)
    config = model.config
    assert config.num_hidden_layers == len(blocks)
    intermediate = getattr(config, layout.intermediate_key)
    heads, kv_heads, head_dim = attention_sizes(config)
    for block in blocks:
        assert weight_matrix(submodule(block, layout.mlp_consumer)).shape[1] == intermediate
        for name, pieces in layout.mlp_producers:
            assert weight_matrix(submodule(block, name)).shape[0] == pieces * intermediate
        assert weight_matrix(submodule(block, layout.attention.output)).shape[1] == heads * head_dim
        if layout.attention.q:
            assert weight_matrix(submodule(block, layout.attention.k)).shape[0] == kv_heads * head_dim
    for key in ("layer_types",):
        if getattr(config, key, None) is not None:
            assert len(getattr(config, key)) == len(blocks)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_family_shrinks_saves_and_reloads_with_plain_transformers(family, tmp_path):
    model = build(family, layers=4)
    units = "mlp,heads,blocks" if family in HEADS_FAMILIES else "mlp,blocks"
    before = sum(p.numel() for p in model.parameters())
    report = shrink(model, ratio=0.4, units=units, multiple_of=8, calibration_ids=random_calibration(), progress=False, device="cpu")
    assert report["removed_blocks"], report  # 0.4 of 4 blocks shared by the mix removes one
    assert report["parameters"]["after"] < before
    check_config_matches_tensors(model, family)
    ids = random_calibration(2, 24, seed=3)
    reloaded = save_and_reload(model, tmp_path / family)
    check_config_matches_tensors(reloaded, family)
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), rtol=0, atol=1e-5)
    # Greedy generation with the KV cache works on the reloaded folder and matches the in-memory model.
    prompt = ids[:1, :5]
    kwargs = dict(max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(reloaded.generate(prompt, **kwargs), model.generate(prompt, **kwargs))


@pytest.mark.parametrize("family", ("llama", "phi3", "gpt2"))
def test_units_whose_weights_are_zero_are_removed_without_changing_outputs(family):
    model = build(family)
    layout = find_layout(model)
    _, blocks = find_blocks(model)
    width = weight_matrix(submodule(blocks[0], layout.mlp_consumer)).shape[1]
    dead = list(range(0, width, 4))  # a quarter of the channels
    for block in blocks:
        for name, pieces in layout.mlp_producers:
            producer = submodule(block, name)
            rows = [piece * width + j for piece in range(pieces) for j in dead]
            if producer.weight.shape[0] == weight_matrix(producer).shape[0]:
                producer.weight.data[rows] = 0.0
            else:  # Conv1D, stored (inputs, outputs)
                producer.weight.data[:, rows] = 0.0
            if producer.bias is not None:
                producer.bias.data[rows] = 0.0
        consumer = submodule(block, layout.mlp_consumer)
        if consumer.weight.shape == weight_matrix(consumer).shape:
            consumer.weight.data[:, dead] = 0.0
        else:
            consumer.weight.data[dead] = 0.0
    ids = random_calibration(2, 16, seed=5)
    expected = logits(model, ids)
    report = shrink(model, ratio=0.1, units="mlp", score="magnitude", compensate=False,
                    multiple_of=width // 4, progress=False, device="cpu")
    assert report["kept"]["intermediate_size"] == width - len(dead)
    assert all(record["mlp_channels_removed"] == dead for record in report["blocks"].values())
    torch.testing.assert_close(logits(model, ids), expected, rtol=0, atol=1e-6)


def test_zero_heads_are_removed_without_changing_outputs():
    model = build("llama")
    _, blocks = find_blocks(model)
    heads, kv_heads, head_dim = attention_sizes(model.config)
    dead_heads = [1, 3]  # one query head of each key/value group (2 groups of 2)
    for block in blocks:
        for head in dead_heads:
            rows = slice(head * head_dim, (head + 1) * head_dim)
            block.self_attn.q_proj.weight.data[rows] = 0.0
            block.self_attn.o_proj.weight.data[:, rows] = 0.0
    ids = random_calibration(2, 16, seed=6)
    expected = logits(model, ids)
    report = shrink(model, ratio=0.11, units="heads", score="magnitude", compensate=False, progress=False, device="cpu")
    assert report["kept"]["num_attention_heads"] == 2 and report["kept"]["num_key_value_heads"] == 2
    assert all(record["query_heads_removed"] == dead_heads for record in report["blocks"].values())
    torch.testing.assert_close(logits(model, ids), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("with_bias", (False, True))
def test_least_squares_compensation_equals_a_direct_lstsq(with_bias):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(200, 12, generator=generator, dtype=torch.float64) + 0.5
    weight = torch.randn(5, 12, generator=generator, dtype=torch.float64)
    bias = torch.randn(5, generator=generator, dtype=torch.float64) if with_bias else None
    stats = InputStatistics(inputs.t() @ inputs, inputs.sum(0), len(inputs))  # float64, for an exact comparison
    keep = [0, 2, 3, 7, 8, 11]
    new_weight, new_bias = least_squares_refit(weight, stats, keep, bias, damp=0.0)
    target = inputs @ weight.t() + (bias if with_bias else 0.0)
    design = inputs[:, keep]
    if with_bias:
        design = torch.cat([design, torch.ones(len(inputs), 1, dtype=design.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, target).solution
    torch.testing.assert_close(new_weight, solution[: len(keep)].t())
    if with_bias:
        torch.testing.assert_close(new_bias, solution[-1])
    else:
        assert new_bias is None


def test_compensation_lowers_the_layer_error():
    model = build("llama")
    ids = random_calibration(4, 32)
    errors = {}
    for compensate in (False, True):
        shrunk = build("llama")
        shrink(shrunk, ratio=0.3, units="mlp", score="hessian", compensate=compensate, multiple_of=8,
               calibration_ids=ids, progress=False, device="cpu")
        errors[compensate] = float((logits(shrunk, ids) - logits(model, ids)).pow(2).mean())
    assert errors[True] < errors[False]


@pytest.mark.parametrize("ratio", (0.05, 0.1, 0.25, 0.33, 0.5, 0.6))
@pytest.mark.parametrize("multiple_of", (8, 16))
def test_ratio_reached_is_within_one_rounding_step(ratio, multiple_of):
    model = build("llama")
    layout = find_layout(model)
    plan = make_plan(unit_costs(model, layout), ratio, ("mlp",), multiple_of)
    assert abs(plan.reached - ratio) <= plan.step
    assert plan.intermediate % multiple_of == 0
    report = shrink(model, ratio=ratio, units="mlp", multiple_of=multiple_of, calibration_ids=random_calibration(),
                    progress=False, device="cpu")
    _, blocks = find_blocks(model)
    removed = 1 - sum(p.numel() for p in blocks.parameters()) / report["parameters"]["blocks_before"]
    assert removed == pytest.approx(plan.reached)


def test_tied_embeddings_stay_tied(tmp_path):
    model = build("llama", tie_word_embeddings=True)
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    shrink(model, ratio=0.25, units="mlp,heads", multiple_of=8, calibration_ids=random_calibration(), progress=False, device="cpu")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    reloaded = save_and_reload(model, tmp_path / "tied")
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()


def test_gpt2_inverse_layer_scaling_survives_block_removal(tmp_path):
    model = build("gpt2", layers=4, scale_attn_by_inverse_layer_idx=True)
    report = shrink(model, ratio=0.25, units="blocks", block_correction=False, calibration_ids=random_calibration(),
                    progress=False, device="cpu")
    assert len(report["removed_blocks"]) == 1
    removed = report["removed_blocks"][0]
    # the survivors compute what they did in their old slots: compare to the dense model run without that block
    dense = build("gpt2", layers=4, scale_attn_by_inverse_layer_idx=True)
    ids = random_calibration(2, 16, seed=2)
    hidden = {}

    def skip(module, args, output):
        return (args[0],) + tuple(output[1:]) if isinstance(output, tuple) else args[0]

    dense.transformer.h[removed].register_forward_hook(skip)
    expected = logits(dense, ids)
    torch.testing.assert_close(logits(model, ids), expected, rtol=0, atol=1e-5)
    reloaded = save_and_reload(model, tmp_path / "gpt2")
    torch.testing.assert_close(logits(reloaded, ids), expected, rtol=0, atol=1e-5)
    del hidden


def test_block_removal_drops_the_least_influential_block_and_per_layer_lists():
    model = build("gemma2", layers=4)
    model.config.layer_types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    _, blocks = find_blocks(model)
    with torch.no_grad():  # block 2 does (almost) nothing: its output projections are zero
        blocks[2].self_attn.o_proj.weight.zero_()
        blocks[2].mlp.down_proj.weight.zero_()
    report = shrink(model, ratio=0.25, units="blocks", calibration_ids=random_calibration(), progress=False, device="cpu")
    assert report["removed_blocks"] == [2]
    assert model.config.layer_types == ["sliding_attention", "full_attention", "full_attention"]
    assert [block.self_attn.layer_idx for block in find_blocks(model)[1]] == [0, 1, 2]


def test_scores_rank_the_obviously_useless_channel_lowest():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(300, 6, generator=generator)
    inputs[:, 4] *= 1e-3  # channel 4 barely varies and is tiny
    weight = torch.randn(3, 6, generator=generator)
    weight[:, 4] *= 1e-3
    stats = InputStatistics.empty(6, "cpu")
    stats.update(inputs)
    for kind in ("magnitude", "wanda", "fluctuation", "hessian"):
        assert int(channel_scores(kind, weight, stats).argmin()) == 4, kind
    assert choose_units("obs", weight, stats, [[j] for j in range(6)], 1) == [4]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ratio=0.0), "ratio must be in \\(0, 1\\)"),
        (dict(ratio=1.2), "ratio must be in \\(0, 1\\)"),
        (dict(ratio=0.25, units="mlp,neurons"), "unknown unit 'neurons'"),
        (dict(ratio=0.97, units="mlp", multiple_of=8), "cannot be reached"),
        (dict(ratio=0.25, score="random"), "unknown score"),
    ],
)
def test_bad_options_fail_with_one_clear_line(kwargs, message):
    with pytest.raises(LLMPruneError, match=message) as info:
        shrink(build("llama"), calibration_ids=random_calibration(), progress=False, device="cpu", **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("family", ("gpt2", "opt", "gpt_neox"))
def test_heads_of_families_that_tie_head_size_to_hidden_size_are_refused(family):
    with pytest.raises(LLMPruneError, match="heads cannot be removed"):
        shrink(build(family), ratio=0.25, units="heads", calibration_ids=random_calibration(), progress=False, device="cpu")


def test_cli_shrinks_a_folder_and_inspect_and_eval_read_it(tiny_model_dir, tmp_path, capsys, calibration_text):
    out = tmp_path / "shrunk"
    code = main(["shrink", "--model", str(tiny_model_dir), "--ratio", "0.25", "--units", "mlp,heads", "--multiple-of", "8",
                 "--calibration", str(calibration_text), "--nsamples", "4", "--seqlen", "16", "--output", str(out),
                 "--no-progress", "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "llmprune_report.json").read_text())
    assert report["method"] == "shrink" and report["blocks"]
    assert 0 < report["file_bytes"]["after"] < report["file_bytes"]["before"]
    config = json.loads((out / "config.json").read_text())
    assert config["num_attention_heads"] == report["kept"]["num_attention_heads"]
    assert config["intermediate_size"] == report["kept"]["intermediate_size"]
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.model.layers[0].mlp.down_proj.in_features == config["intermediate_size"]
    assert main(["inspect", str(out)]) == 0
    assert main(["eval", "--model", str(out), "--ppl", str(calibration_text), "--seqlen", "16", "--eval-windows", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["shrink", "--model", str(tiny_model_dir), "--ratio", "1.5", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmprune: error: ratio must be in (0, 1)") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("family, expected", [("llama", ["mlp", "blocks"]), ("gpt2", ["mlp", "blocks"]),
                                              ("gemma2", ["mlp", "heads"])])
def test_auto_units_take_blocks_where_the_bridge_fits_else_heads_where_the_family_allows(family, expected):
    report = shrink(build(family), ratio=0.25, multiple_of=8, calibration_ids=random_calibration(), progress=False, device="cpu")
    assert sorted(report["units"]) == sorted(expected)
