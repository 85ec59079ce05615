"""GGUF output, checked by two readers that share no code with the writer: transformers' GGUF loader
(the logits of the reloaded model against the saved folder's) and ``gguf.GGUFReader`` (shapes, metadata).

Tiny random models of every exported family; a shrunk one with fewer heads, a narrower MLP and blocks
removed; the source file's tokenizer and description kept with the shrunk sizes; the refusal of families
llama.cpp cannot take; atomic writes. No llama.cpp is needed.
"""
from __future__ import annotations

import json
import sys

import gguf
import numpy as np
import pytest
import torch
import transformers

import llmprune
from llmprune.cli import main
from llmprune.errors import LLMPruneError
from llmprune.io import gguf_export
from llmprune.io.gguf_export import export_gguf
from llmprune.io.gguf_vocab import field_value

VOCAB = 320  # more embedding rows than tokenizer entries: the padded rows must be written as unused tokens
BASE = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=256, head_dim=16)
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**BASE),
    "mistral": lambda: transformers.MistralConfig(**BASE),
    "qwen2": lambda: transformers.Qwen2Config(**BASE),
    "qwen3": lambda: transformers.Qwen3Config(**BASE),
    "gemma2": lambda: transformers.Gemma2Config(**BASE, query_pre_attn_scalar=16),
    "gemma3": lambda: transformers.Gemma3TextConfig(**BASE, query_pre_attn_scalar=16),
}
# Settings transformers' GGUF loader does not read for these families although the file carries them
# (qwen3: attention.key_length; gemma: the query scale, which llama.cpp ties to the head size): the reload
# gets the folder's config, and the file's keys are checked with the gguf reader instead.
CONFIG_NOT_READ = {"qwen3", "gemma2", "gemma3"}
# Measured on these models: f16 at most 6e-4, q8_0 at most 0.023 (logits of magnitude about 0.6).
TOLERANCE = {"f32": 1e-5, "f16": 3e-3, "q8_0": 0.06}


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE tokenizer trained offline (the kind llama.cpp calls gpt2), with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["the cat sat on the mat and the dog ran in the park while birds sang"] * 50, trainer)
    wrapped = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>",
                                                   eos_token="<|im_end|>")
    wrapped.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    return wrapped


def tiny(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(CONFIGS[family](), attn_implementation="eager").eval()


def save(model, tokenizer, folder, report: dict | None = None):
    llmprune.save_pretrained(model, tokenizer, folder, report or {"model": "tiny"})
    return folder


def reload(path, config=None):
    extra = {"config": config} if config is not None else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, **extra)
    return model.eval()


@torch.no_grad()
def logits(model, seed: int = 1) -> torch.Tensor:
    ids = torch.randint(0, 290, (2, 24), generator=torch.Generator().manual_seed(seed))
    return model(input_ids=ids).logits


def fields(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {key: field.contents() for key, field in reader.fields.items()}


def tensor_shapes(path) -> dict[str, list[int]]:
    return {t.name: [int(n) for n in reversed(t.shape.tolist())] for t in gguf.GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("family", list(CONFIGS))
def test_round_trip_through_transformers(tmp_path, bpe_tokenizer, family, kind):
    model = tiny(family)
    # general.name comes from the folder's name; transformers' loader fails on a llama-architecture file whose
    # name says "mistral" (it looks for a gguf architecture "mistral" that does not exist), llama.cpp does not.
    folder = save(model, bpe_tokenizer, tmp_path / "model")
    written = export_gguf(folder, tmp_path / "model.gguf", kind)
    reloaded = reload(tmp_path / "model.gguf", model.config if family in CONFIG_NOT_READ else None)
    expected, actual = logits(model), logits(reloaded)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= TOLERANCE[kind]
    if kind != "f32":  # a real quantisation happened: not the same numbers
        assert (actual - expected).abs().max().item() > 0
    assert written["gguf_type"] == kind.upper()


def test_reader_sees_names_shapes_types_and_metadata(tmp_path, bpe_tokenizer):
    model = tiny("qwen3")
    path = tmp_path / "q.gguf"
    export_gguf(save(model, bpe_tokenizer, tmp_path / "q"), path, "q8_0")
    meta, shapes = fields(path), tensor_shapes(path)
    assert meta["general.architecture"] == "qwen3"
    assert meta["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert meta["qwen3.block_count"] == 4 and meta["qwen3.feed_forward_length"] == 128
    assert (meta["qwen3.attention.head_count"], meta["qwen3.attention.head_count_kv"]) == (4, 2)
    assert meta["qwen3.attention.key_length"] == meta["qwen3.attention.value_length"] == 16
    assert shapes["blk.0.attn_q.weight"] == [64, 64] and shapes["blk.0.attn_k.weight"] == [32, 64]
    assert shapes["blk.3.attn_q_norm.weight"] == [16] and shapes["blk.0.ffn_down.weight"] == [64, 128]
    # an untied lm_head is written; tied embeddings have none (llama.cpp then reuses token_embd)
    assert ("output.weight" in shapes) == (not model.config.tie_word_embeddings)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    # the tokenizer: every embedding row has a token, the padded ones unused; merges and the chat template kept
    tokens, token_types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == VOCAB and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert token_types[0] == int(gguf.TokenType.CONTROL) and token_types[-1] == int(gguf.TokenType.UNUSED)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "qwen2"
    assert len(meta["tokenizer.ggml.merges"]) > 0
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    assert meta["tokenizer.ggml.eos_token_id"] == 2


def test_gemma_sliding_pattern_and_norms(tmp_path, bpe_tokenizer):
    model = tiny("gemma3")
    path = tmp_path / "g.gguf"
    export_gguf(save(model, bpe_tokenizer, tmp_path / "g"), path, "f32")
    meta = fields(path)
    assert meta["gemma3.attention.sliding_window_pattern"] == [t == "sliding_attention" for t in model.config.layer_types]
    assert meta["gemma3.rope.freq_base_swa"] == pytest.approx(10000.0)
    reader = gguf.GGUFReader(str(path))
    stored = {t.name: np.array(t.data) for t in reader.tensors}
    norm = model.model.layers[0].input_layernorm.weight.detach().numpy()
    np.testing.assert_allclose(stored["blk.0.attn_norm.weight"], norm + 1.0, rtol=0, atol=1e-7)  # llama.cpp multiplies by it


def test_llama_rotary_rows_permuted(tmp_path, bpe_tokenizer):
    model = tiny("llama")
    path = tmp_path / "l.gguf"
    export_gguf(save(model, bpe_tokenizer, tmp_path / "l"), path, "f32")
    stored = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(path)).tensors}
    q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    # head 0, first rows: llama.cpp wants channel i of the first half next to channel i of the second half
    np.testing.assert_array_equal(stored["blk.0.attn_q.weight"][0], q[0])
    np.testing.assert_array_equal(stored["blk.0.attn_q.weight"][1], q[8])
    assert not np.array_equal(stored["blk.0.attn_q.weight"], q)


def _shrunk_llama(tokenizer):
    model = tiny("llama", seed=3)
    ids = torch.randint(0, 290, (8, 32), generator=torch.Generator().manual_seed(0))
    report = llmprune.shrink(model, tokenizer, ratio=0.5, units="mlp,heads,blocks", score="hessian",
                             multiple_of=32, calibration_ids=ids, progress=False)
    return model, report


def test_shrunk_model_round_trip_with_new_sizes(tmp_path, bpe_tokenizer):
    model, report = _shrunk_llama(bpe_tokenizer)
    config = model.config
    assert report["removed_blocks"] and config.num_attention_heads < 4 and config.intermediate_size < 128
    folder = save(model, bpe_tokenizer, tmp_path / "shrunk", report)
    path = tmp_path / "shrunk.gguf"
    export_gguf(folder, path, "f32")
    meta = fields(path)
    assert meta["llama.block_count"] == config.num_hidden_layers < 4
    assert meta["llama.feed_forward_length"] == config.intermediate_size
    assert meta["llama.attention.head_count"] == config.num_attention_heads
    assert meta["llama.attention.head_count_kv"] == config.num_key_value_heads
    # head size 16 no longer equals hidden / heads: llama.cpp needs it spelt out
    assert meta["llama.attention.key_length"] == meta["llama.rope.dimension_count"] == 16
    assert f"blk.{config.num_hidden_layers}.attn_q.weight" not in tensor_shapes(path)
    reloaded = reload(path)  # transformers reads every size of a llama from the file
    assert reloaded.config.num_attention_heads == config.num_attention_heads
    assert (logits(reloaded) - logits(model)).abs().max().item() <= TOLERANCE["f32"]


def _source_gguf(tmp_path, tokenizer, family="llama") -> tuple:
    """A GGUF file standing for a downloaded model: written from a folder, then given its own description."""
    model = tiny(family, seed=3)
    first = tmp_path / "source.gguf"
    export_gguf(save(model, tokenizer, tmp_path / "source-folder"), first, "f16")
    reader = gguf.GGUFReader(str(first))
    writer = gguf.GGUFWriter(tmp_path / "downloaded.gguf", reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value, vtype = field_value(field)
        if isinstance(value, list):
            writer.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=vtype)
        else:
            writer.add_key_value(key, value, vtype)
    writer.add_string("general.name", "Tiny Downloaded Model")
    writer.add_string("general.license", "apache-2.0")
    writer.add_string("tokenizer.chat_template", "SOURCE TEMPLATE")
    writer.add_string("tokenizer.ggml.pre", "smollm")
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data), raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, tmp_path / "downloaded.gguf"


def test_source_tokenizer_and_description_kept_sizes_edited(tmp_path, bpe_tokenizer):
    _, source = _source_gguf(tmp_path, bpe_tokenizer)
    model, report = _shrunk_llama(bpe_tokenizer)
    report["model"] = str(source)  # what `llmprune shrink --model downloaded.gguf` records
    folder = save(model, bpe_tokenizer, tmp_path / "shrunk", report)
    assert json.loads((folder / "llmprune_report.json").read_text())["source_gguf"] == str(source.resolve())
    path = tmp_path / "out.gguf"
    written = export_gguf(folder, path, "q8_0")
    assert written["tokenizer_from"].startswith("source GGUF")
    meta, original = fields(path), fields(source)
    for key in ("general.name", "general.license", "tokenizer.chat_template", "tokenizer.ggml.pre",
                "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        assert meta[key] == original[key], key
    assert original["llama.block_count"] == 4 and meta["llama.block_count"] == model.config.num_hidden_layers
    assert meta["llama.feed_forward_length"] == model.config.intermediate_size != original["llama.feed_forward_length"]
    assert meta["llama.attention.head_count"] == model.config.num_attention_heads
    assert "llama.attention.key_length" not in original and meta["llama.attention.key_length"] == 16
    assert meta["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0) != original["general.file_type"]


@pytest.mark.parametrize("family", ["phi3", "gpt2"])
def test_refusal_for_families_without_mapping(tmp_path, bpe_tokenizer, capsys, family):
    from tests.conftest import tiny_model

    folder = tmp_path / family
    tiny_model(family).save_pretrained(folder)
    capsys.readouterr()
    out = tmp_path / "out.gguf"
    assert main(["convert", str(folder), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmprune: error: no GGUF export for model type")
    assert sorted(p.name for p in tmp_path.iterdir()) == [family]  # nothing written, no temporary left


def test_failed_conversion_leaves_nothing_and_keeps_old_file(tmp_path, bpe_tokenizer, monkeypatch):
    folder = save(tiny("qwen2"), bpe_tokenizer, tmp_path / "m")
    path = tmp_path / "m.gguf"
    path.write_bytes(b"previous file")
    calls = {"n": 0}
    original = gguf_export.encode

    def failing(array, kind):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return original(array, kind)

    monkeypatch.setattr(gguf_export, "encode", failing)
    with pytest.raises(RuntimeError):
        export_gguf(folder, path, "f16", overwrite=True)
    assert path.read_bytes() == b"previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.gguf"]
    with pytest.raises(LLMPruneError, match="already exists"):
        export_gguf(folder, path, "f16")
    with pytest.raises(LLMPruneError, match="must end in .gguf"):
        export_gguf(folder, tmp_path / "m.bin", "f16")


def test_k_quants_need_llama_cpp(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(LLMPruneError, match="llama-cpp-python"):
        gguf_export.parse_gguf_type("q4_k_m")
    with pytest.raises(LLMPruneError, match="unknown GGUF type"):
        gguf_export.parse_gguf_type("q3_x")
    assert gguf_export.parse_gguf_type("Q8_0").name == "Q8_0"


def test_prune_and_decompress_save_gguf(tmp_path, bpe_tokenizer):
    """`llmprune --save-format gguf` and `llmprune decompress --save-format gguf` from the command line."""
    model = tiny("qwen2")
    folder = save(model, bpe_tokenizer, tmp_path / "dense")
    out = tmp_path / "pruned"
    assert main(["--model", str(folder), "--method", "magnitude", "--sparsity", "0.5", "--save-format", "gguf",
                 "--gguf-type", "f32", "--output", str(out), "--no-progress"]) == 0
    report = json.loads((out / "llmprune_report.json").read_text())
    path = out / "pruned-F32.gguf"
    assert sorted(p.name for p in out.iterdir()) == ["llmprune_report.json", "pruned-F32.gguf"]
    assert report["gguf"]["path"] == str(path) and report["gguf"]["gguf_type"] == "F32"
    stored = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(path)).tensors}
    assert (stored["blk.0.ffn_up.weight"] == 0).mean() == pytest.approx(0.5, abs=0.01)

    sparse = tmp_path / "sparse"
    assert main(["--model", str(folder), "--method", "magnitude", "--sparsity", "0.5", "--save-format", "sparse",
                 "--output", str(sparse), "--no-progress"]) == 0
    assert main(["decompress", str(sparse), str(tmp_path / "from-sparse"), "--save-format", "gguf", "--gguf-type", "f32"]) == 0
    again = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(tmp_path / "from-sparse" / "from-sparse-F32.gguf")).tensors}
    assert stored.keys() == again.keys()
    for name in stored:
        np.testing.assert_array_equal(stored[name], again[name])


def test_shrink_saves_gguf_and_refuses_unmapped_family_before_work(tmp_path, bpe_tokenizer, calibration_text, capsys):
    """`llmprune shrink --save-format gguf`: the folder holds the file and the report (with the file's sizes);
    a family llama.cpp cannot take is refused in one line before any shrinking, and nothing is written."""
    from tests.conftest import tiny_model

    folder = save(tiny("llama"), bpe_tokenizer, tmp_path / "dense")
    out = tmp_path / "shrunk"
    common = ["--ratio", "0.25", "--units", "mlp", "--score", "magnitude", "--nsamples", "2", "--seqlen", "16",
              "--calibration", str(calibration_text), "--save-format", "gguf", "--gguf-type", "q8_0", "--no-progress"]
    assert main(["shrink", "--model", str(folder), *common, "--output", str(out)]) == 0
    report = json.loads((out / "llmprune_report.json").read_text())
    meta = fields(out / "shrunk-Q8_0.gguf")
    assert meta["llama.feed_forward_length"] == report["config_changes"]["intermediate_size"][1] < 128
    assert report["file_bytes"]["after"] == (out / "shrunk-Q8_0.gguf").stat().st_size

    opt = tmp_path / "opt"
    tiny_model("opt").save_pretrained(opt)
    bpe_tokenizer.save_pretrained(opt)
    capsys.readouterr()
    assert main(["shrink", "--model", str(opt), *common, "--output", str(tmp_path / "opt-out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["llmprune: error: no GGUF export for model type 'opt' (supported: gemma2, gemma3_text, llama, "
                   "mistral, qwen2, qwen3)"]
    assert not (tmp_path / "opt-out").exists()


def test_k_quants_go_through_llama_cpp_quantizer(tmp_path, bpe_tokenizer, monkeypatch):
    """The K-quant path hands an f16 file and the file type to llama.cpp's quantizer (a stand-in module
    here: CI has no llama.cpp build) and renames its output into place; a failing quantizer leaves nothing."""
    import shutil
    import types

    calls = []

    def quantize(source: bytes, target: bytes, params) -> int:
        calls.append((fields(source.decode())["general.file_type"], params.ftype))
        if params.ftype == int(gguf.LlamaFileType.MOSTLY_Q6_K):
            return 1  # llama.cpp's failure status
        shutil.copyfile(source.decode(), target.decode())
        return 0

    stand_in = types.SimpleNamespace(llama_model_quantize=quantize,
                                     llama_model_quantize_default_params=lambda: types.SimpleNamespace(ftype=0, nthread=0))
    monkeypatch.setitem(sys.modules, "llama_cpp", stand_in)
    folder = save(tiny("qwen2"), bpe_tokenizer, tmp_path / "m")
    written = export_gguf(folder, tmp_path / "m.gguf", "q4_k_m")
    assert calls == [(int(gguf.LlamaFileType.MOSTLY_F16), int(gguf.LlamaFileType.MOSTLY_Q4_K_M))]
    assert written["gguf_type"] == "Q4_K_M" and (tmp_path / "m.gguf").is_file()
    with pytest.raises(LLMPruneError, match="could not quantize to Q6_K"):
        export_gguf(folder, tmp_path / "q6.gguf", "q6_k")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.gguf"]


def test_rope_scaling_linear_written_other_kinds_refused():
    from llmprune.io.gguf_families import family_for, hyperparameters

    gemma = transformers.Gemma3TextConfig(**BASE, query_pre_attn_scalar=16, rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    keys = hyperparameters(gemma, family_for(gemma))
    assert keys["gemma3.rope.scaling.type"][0] == "linear" and keys["gemma3.rope.scaling.factor"][0] == 8.0
    assert keys["gemma3.rope.freq_base"][0] == 1e6 and keys["gemma3.rope.freq_base_swa"][0] == 1e4
    llama3 = transformers.LlamaConfig(**{**BASE, "max_position_embeddings": 16384}, rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})
    with pytest.raises(LLMPruneError, match=r"rope scaling \(llama3\) has no GGUF export"):
        hyperparameters(llama3, family_for(llama3))
    odd = transformers.Gemma2Config(**BASE, query_pre_attn_scalar=64)
    with pytest.raises(LLMPruneError, match="query_pre_attn_scalar"):
        hyperparameters(odd, family_for(odd))


def test_the_source_gguf_of_every_alias_is_found_or_none_never_an_error(tmp_path, monkeypatch):
    """A report records its source GGUF after all the work: the 1.5B alias (assembled from part packages)
    and an alias whose package is missing must not fail the save."""
    from llmprune.io.assembly import QWEN_CODER
    from llmprune.io.gguf_export import source_gguf_of
    from llmprune.io.loading import ALIASES

    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path))
    assert source_gguf_of("qwen-coder") is None  # not assembled here
    QWEN_CODER.cached_file().parent.mkdir(parents=True)
    QWEN_CODER.cached_file().write_bytes(b"GGUF")
    assert source_gguf_of("qwen-coder") == QWEN_CODER.cached_file().resolve()
    assert source_gguf_of("llama").name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setitem(ALIASES, "gone", type(ALIASES["llama"])("no_such_asset_package", "x.gguf", "gone"))
    assert source_gguf_of("gone") is None


def test_the_option_lists_name_what_the_writers_accept():
    """The CLI's choices live in the torch-free options module; the writers keep their own tables."""
    from llmprune import options
    from llmprune.io import gguf_export, writer

    assert tuple(gguf_export.GGUF_TYPES) == options.GGUF_TYPES
    assert writer.SAVE_FORMATS == options.SAVE_FORMATS
