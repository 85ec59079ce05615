"""Shared fixtures: tiny randomly initialised models of each family, and a tiny model folder with a tokenizer."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spin-waiting threads slow small tests badly when the machine is busy
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import transformers

torch.set_num_threads(1)

# Small enough to run in milliseconds, with every linear layer's input a multiple of 8.
COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)

FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**COMMON, intermediate_size=128, num_key_value_heads=2),
    "mistral": lambda: transformers.MistralConfig(**COMMON, intermediate_size=128, num_key_value_heads=2),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, intermediate_size=128, num_key_value_heads=2),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, intermediate_size=128, num_key_value_heads=2, head_dim=16),
    "gemma2": lambda: transformers.Gemma2Config(**COMMON, intermediate_size=128, num_key_value_heads=2, head_dim=16),
    "phi3": lambda: transformers.Phi3Config(**COMMON, intermediate_size=128, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "opt": lambda: transformers.OPTConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
        word_embed_proj_dim=64, max_position_embeddings=256,
    ),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**COMMON, intermediate_size=128),
}


def tiny_model(family: str = "llama", seed: int = 0):
    torch.manual_seed(seed)
    config = FAMILIES[family]()
    config.use_cache = False
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.eval()


def random_calibration(nsamples: int = 4, seqlen: int = 32, vocab: int = 128, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (nsamples, seqlen), generator=generator)


def tiny_tokenizer():
    """A word-level tokenizer built offline, so folders have real tokenizer files."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    text = ("the cat sat on the mat and the dog ran in the park while birds sang " * 20).split(". ")
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(text, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Llama with a tokenizer: what a user's local model folder looks like."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    model = tiny_model("llama")
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def calibration_text(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(("the cat sat on the mat and the dog ran in the park while birds sang. " * 200), encoding="utf-8")
    return path


def pytest_terminal_summary(terminalreporter):
    """One line on how the reference outputs were compared on this machine."""
    from tests.reference_outputs import REFERENCE_FILE, cpu_family

    import json

    exact = cpu_family() in json.loads(REFERENCE_FILE.read_text()).get("exact", {})
    terminalreporter.write_line(
        f"reference outputs: {'exact hashes and tolerant checks' if exact else 'tolerant checks only (no exact hashes for this CPU family)'}"
        f" on {cpu_family()}")
