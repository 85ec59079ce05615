"""Sparse safetensors: the compressed-tensors layouts, bit-exact round trips, refusals, decompress."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from io_helpers import assert_same_weights, bits, prune_24, prune_rows, report_for, tiny_llama
from llmprune.cli import main
from llmprune.errors import LLMPruneError
from llmprune.io.loading import load_pretrained
from llmprune.io.sparse import (
    compress_24,
    compress_bitmask,
    decompress,
    pack_bitmask,
    save_sparse_model,
    unpack_bitmask,
)
from llmprune.io.writer import save_pruned_model

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def read_all(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def test_bitmask_packs_little_endian_along_each_row():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 0] = True  # bit 0 of byte 0
    mask[0, 9] = True  # bit 1 of byte 1
    mask[1, 7] = True  # bit 7 of byte 0
    packed = pack_bitmask(mask)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [[1, 2], [128, 0]]
    assert torch.equal(unpack_bitmask(packed, 10), mask)


def test_unstructured_layout_tensors():
    weight = torch.tensor([[0.0, 1.5, 0.0], [0.0, 0.0, 0.0], [2.0, -3.0, 4.0]])
    parts = compress_bitmask("m", weight)
    assert parts["m.compressed"].tolist() == [1.5, 2.0, -3.0, 4.0]
    assert parts["m.shape"].dtype == torch.int64 and parts["m.shape"].tolist() == [3, 3]
    assert parts["m.row_offsets"].dtype == torch.int64 and parts["m.row_offsets"].tolist() == [0, 1, 1]
    assert parts["m.bitmask"].tolist() == [[0b010], [0], [0b111]]
    restored = decompress({k.split(".", 1)[1]: v for k, v in parts.items()})
    assert torch.equal(restored, weight)


def test_24_layout_has_two_slots_per_group_even_for_sparser_groups():
    weight = torch.tensor([[0.0, 5.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0], [0.0] * 8])
    parts = compress_24("m", weight)
    assert parts["m.compressed"].shape == (2, 4)
    unpacked = unpack_bitmask(parts["m.bitmask"], 8)
    assert unpacked.reshape(2, 2, 4).sum(-1).tolist() == [[2, 2], [2, 2]]
    assert "m.row_offsets" not in parts
    assert torch.equal(decompress({k.split(".", 1)[1]: v for k, v in parts.items()}), weight)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_round_trip_is_bit_exact(tmp_path, dtype, pattern):
    model = tiny_llama(dtype)
    layers = prune_24(model) if pattern else prune_rows(model, 0.6)
    q = model.model.layers[0].self_attn.q_proj.weight.data
    q[3] = 0  # a row with no non-zero at all
    if pattern is None:
        q[5] = torch.arange(1, q.shape[1] + 1, dtype=dtype)  # a row with no zero at all
    report = report_for(layers, pattern)
    out = save_pruned_model(model, None, tmp_path / "sparse", report, save_format="sparse")

    config = json.loads((out / "config.json").read_text())
    quant = config["quantization_config"]
    expected_format = "sparse-24-bitmask" if pattern else "sparse-bitmask"
    assert quant["quant_method"] == "compressed-tensors"
    assert quant["sparsity_config"]["format"] == expected_format
    assert quant["sparsity_config"]["sparsity_structure"] == (pattern or "unstructured")
    assert quant["sparsity_config"]["global_sparsity"] == pytest.approx(report["total_sparsity"])
    assert "lm_head" in quant["sparsity_config"]["ignore"]

    stored = read_all(out / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj"
    assert f"{name}.weight" not in stored
    assert stored[f"{name}.compressed"].dtype == dtype
    assert stored[f"{name}.bitmask"].shape == (64, 8)
    if pattern:
        assert stored[f"{name}.compressed"].shape == (64, 32)
    else:
        assert stored[f"{name}.compressed"].dim() == 1
        assert stored[f"{name}.compressed"].numel() == int((q != 0).sum())
        assert stored[f"{name}.row_offsets"].shape == (64,)
    assert "model.embed_tokens.weight" in stored and "lm_head.weight" not in stored  # tied, stored once

    loaded = load_pretrained(out)
    assert type(loaded).__name__ == "LlamaForCausalLM" and loaded.dtype == dtype
    assert_same_weights(model.state_dict(), loaded.state_dict())
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_sparse_file_is_smaller_than_dense(tmp_path):
    model = tiny_llama(torch.bfloat16, tie=False)
    layers = prune_rows(model, 0.9)
    dense = save_pruned_model(model, None, tmp_path / "dense")
    sparse = save_pruned_model(model, None, tmp_path / "sparse", report_for(layers, sparsity=0.9), save_format="sparse")
    linear_bytes = sum(m.weight.numel() * 2 for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head)
    saved = (dense / "model.safetensors").stat().st_size - (sparse / "model.safetensors").stat().st_size
    # 90% zeros in bf16 keep ~11% of the values (57 of 64 dropped per row), one bit per weight
    # (1/16 of the bytes) and 8 bytes of row offset per 64-wide row (another 1/16): ~76% saved.
    assert saved > 0.72 * linear_bytes


def test_not_24_is_refused_and_nothing_is_written(tmp_path):
    model = tiny_llama()
    layers = prune_24(model)
    model.model.layers[1].mlp.up_proj.weight.data[7, :4] = 1.0
    with pytest.raises(LLMPruneError, match=r"model\.layers\.1\.mlp\.up_proj is not 2:4 sparse: 1 of"):
        save_pruned_model(model, None, tmp_path / "out", report_for(layers, "2:4"), save_format="sparse")
    assert list(tmp_path.iterdir()) == []


def test_unknown_save_format_is_refused(tmp_path):
    with pytest.raises(LLMPruneError, match="unknown save format 'zip'"):
        save_pruned_model(tiny_llama(), None, tmp_path / "out", save_format="zip")


def test_unpruned_layers_stay_dense_and_are_listed_in_ignore(tmp_path):
    model = tiny_llama()
    layers = prune_rows(model, 0.5)
    dense_name = "model.layers.1.mlp.down_proj"
    model.model.layers[1].mlp.down_proj.weight.data.normal_()  # "pruning" skipped this one
    save_sparse_model(model, tmp_path, report_for(layers))
    stored = read_all(tmp_path / "model.safetensors")
    assert f"{dense_name}.weight" in stored and f"{dense_name}.compressed" not in stored
    ignore = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["sparsity_config"]["ignore"]
    assert dense_name in ignore
    assert_same_weights(model.state_dict(), load_pretrained(tmp_path).state_dict())


def test_sharded_folder_with_index_loads_back(tmp_path):
    model = tiny_llama(torch.float16, tie=False)
    layers = prune_rows(model, 0.5)
    save_sparse_model(model, tmp_path, report_for(layers), max_shard_bytes=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    # the parts of one weight share a shard, so it can be decompressed from one file
    name = "model.layers.0.mlp.gate_proj"
    assert len({index["weight_map"][f"{name}.{part}"] for part in ("compressed", "bitmask", "shape", "row_offsets")}) == 1
    assert_same_weights(model.state_dict(), load_pretrained(tmp_path).state_dict())


def test_negative_zero_comes_back_as_positive_zero():
    weight = torch.tensor([[-0.0, 1.0, 0.0, -2.0]])
    restored = decompress({k.split(".", 1)[1]: v for k, v in compress_bitmask("m", weight).items()})
    assert torch.equal(restored, weight)  # equal as numbers
    assert bits(restored)[0, 0] == 0  # but the sign of a zero is not kept


def test_dtype_can_be_changed_on_load(tmp_path):
    model = tiny_llama(torch.bfloat16)
    save_sparse_model(model, tmp_path, report_for(prune_rows(model, 0.5)))
    loaded = load_pretrained(tmp_path, dtype="float32")
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight.float())


def test_decompress_command_writes_a_plain_dense_folder(tmp_path, capsys):
    model = tiny_llama(torch.bfloat16)
    layers = prune_24(model)
    sparse = save_pruned_model(model, None, tmp_path / "sparse", report_for(layers, "2:4"), save_format="sparse")
    assert main(["decompress", str(sparse), str(tmp_path / "dense")]) == 0
    dense = tmp_path / "dense"
    assert "quantization_config" not in json.loads((dense / "config.json").read_text())
    assert (dense / "llmprune_report.json").read_text() == (sparse / "llmprune_report.json").read_text()
    plain = AutoModelForCausalLM.from_pretrained(dense)  # no llmprune involved in reading it
    assert_same_weights(model.state_dict(), plain.state_dict())
    # a dense folder is refused with one line, and the output is not created
    assert main(["decompress", str(dense), str(tmp_path / "again")]) == 2
    assert "already dense" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_loading_a_folder_without_config_is_one_clear_error(tmp_path):
    with pytest.raises(LLMPruneError, match="not a model folder"):
        load_pretrained(tmp_path)


def test_without_a_report_every_block_linear_is_a_target_and_sparsity_is_counted(tmp_path):
    model = tiny_llama(torch.bfloat16)
    prune_24(model)
    model.model.layers[0].mlp.up_proj.weight.data[:, :8] = 0  # groups with fewer than two non-zeros
    quant = save_sparse_model(model, tmp_path, structure="2:4")
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    zeros = sum(int((w == 0).sum()) for w in linears) / sum(w.numel() for w in linears)
    assert quant["sparsity_config"]["global_sparsity"] == pytest.approx(zeros, abs=1e-6)
    assert quant["sparsity_config"]["ignore"] == ["lm_head"]
    assert_same_weights(model.state_dict(), load_pretrained(tmp_path).state_dict())


def test_loading_keeps_one_dense_copy(tmp_path, monkeypatch):
    """The decompressed tensors become the model's parameters as they are: no second dense copy."""
    import llmprune.io.loading as loading

    model = tiny_llama(torch.bfloat16, tie=False)
    save_sparse_model(model, tmp_path, report_for(prune_rows(model, 0.5)))
    produced: dict[str, int] = {}
    original = loading.iter_dense_tensors

    def recording(folder):
        for name, tensor in original(folder):
            produced[name] = tensor.data_ptr()
            yield name, tensor

    monkeypatch.setattr(loading, "iter_dense_tensors", recording)
    loaded = loading.load_pretrained(tmp_path)
    params = dict(loaded.named_parameters())
    assert produced and all(params[name].data_ptr() == ptr for name, ptr in produced.items())


def test_parts_of_one_weight_may_sit_in_different_shards(tmp_path):
    """Other writers do not promise to keep a weight's parts together; reading must not care."""
    from safetensors.torch import save_file

    from llmprune.io.sparse import iter_dense_tensors

    weight = torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]], dtype=torch.float16)
    parts = compress_bitmask("layer", weight)
    first = {k: v for k, v in parts.items() if k.endswith((".compressed", ".shape"))}
    second = {k: v for k, v in parts.items() if k not in first} | {"other.bias": torch.ones(3)}
    save_file(first, tmp_path / "a.safetensors")
    save_file(second, tmp_path / "b.safetensors")
    weight_map = {k: "a.safetensors" for k in first} | {k: "b.safetensors" for k in second}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    dense = dict(iter_dense_tensors(tmp_path))
    assert sorted(dense) == ["layer.weight", "other.bias"]
    assert torch.equal(bits(dense["layer.weight"]), bits(weight))
