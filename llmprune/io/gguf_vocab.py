"""The tokenizer and descriptive metadata of a GGUF file llmprune writes.

A model that came from a GGUF file keeps that file's tokenizer (tokens, merges, token types, special ids),
chat template and ``general.*`` description, read back with ``gguf.GGUFReader``; a folder with no source
GGUF gets its tokenizer built from the Hugging Face tokenizer files by the ``gguf`` package's own vocab
readers (byte-level BPE as ``gpt2``, byte-fallback BPE as ``llama``) and ``gguf.SpecialVocab``.
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf
from gguf import GGUFValueType as T

from ..errors import LLMPruneError
from .gguf_families import GGUFFamily, Metadata

# Keys of a source file that describe a state this export replaces (quantisation, importance matrices, splits).
STALE_PREFIXES = ("GGUF.", "split.", "quantize.")
STALE_KEYS = {gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE, gguf.Keys.General.QUANTIZATION_VERSION}

# tokenizer.ggml.pre names llama.cpp knows for the tokenizers of these families; others get "default"
# (llama.cpp then warns that its pre-tokenisation may differ from the original).
PRE_TOKENIZERS = {"qwen2": "qwen2", "qwen3": "qwen2"}


def field_value(field) -> tuple:
    """(value, type) of a reader field in the form ``Metadata`` holds (arrays as lists with their element type)."""
    main = field.types[0]
    if main == T.ARRAY:
        return field.contents(), field.types[-1]
    return field.contents(), main


def source_metadata(path: Path, family: GGUFFamily, vocab_size: int) -> Metadata:
    """The tokenizer, chat template, ``general.*`` and architecture keys of the source GGUF file.

    Refused (so the caller falls back to the Hugging Face tokenizer) when the file is of another
    architecture or its vocabulary does not match the model's embedding rows.
    """
    reader = gguf.GGUFReader(str(path))
    arch_field = reader.fields.get(gguf.Keys.General.ARCHITECTURE)
    arch = arch_field.contents() if arch_field else None
    if arch != family.name:
        raise LLMPruneError(f"the source GGUF {path} is a '{arch}' model, not '{family.name}'")
    tokens = reader.fields.get(gguf.Keys.Tokenizer.LIST)
    if tokens is None or len(tokens.data) != vocab_size:
        count = None if tokens is None else len(tokens.data)
        raise LLMPruneError(f"the source GGUF {path} has {count} tokens, the model {vocab_size} embedding rows")
    out: Metadata = {}
    for key, field in reader.fields.items():
        if key in STALE_KEYS or key.startswith(STALE_PREFIXES):
            continue
        if key.startswith(("general.", "tokenizer.", f"{arch}.")):
            out[key] = field_value(field)
    return out


def _tokens(folder: Path, vocab_size: int) -> tuple[str, list[bytes], list[float], list[int]]:
    """(tokenizer model, tokens, scores, token types) from the folder's tokenizer files."""
    try:
        vocab = gguf.LlamaHfVocab(folder)
        model = "llama"
    except (FileNotFoundError, TypeError, ValueError):
        try:
            vocab = gguf.BpeVocab(folder)
            model = "gpt2"
        except (FileNotFoundError, ValueError) as exc:
            raise LLMPruneError(f"the tokenizer in {folder} is neither byte-level BPE nor a byte-fallback "
                                f"(SentencePiece-like) BPE; llama.cpp could not use it ({exc})".splitlines()[0]) from None
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(float(score))
        types.append(int(kind))
    if len(tokens) > vocab_size:
        raise LLMPruneError(f"the tokenizer in {folder} has {len(tokens)} tokens, more than the model's {vocab_size} embedding rows")
    for index in range(len(tokens), vocab_size):  # embedding rows no token uses (padded vocabularies)
        tokens.append(f"[PAD{index}]".encode())
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))
    return model, tokens, scores, types


def special_token_ids(folder: Path) -> set[int]:
    """Ids of the tokenizer's special added tokens (llama.cpp treats them as control tokens)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return set()
    added = json.loads(path.read_text(encoding="utf-8")).get("added_tokens") or []
    return {entry["id"] for entry in added if entry.get("special")}


def hf_tokenizer_metadata(folder: Path, model_type: str, vocab_size: int) -> tuple[Metadata, gguf.SpecialVocab]:
    """Tokenizer keys built from Hugging Face tokenizer files, and the special vocabulary (merges, special
    ids, chat template) that ``gguf.SpecialVocab`` writes itself."""
    model, tokens, scores, types = _tokens(folder, vocab_size)
    for index in special_token_ids(folder):
        if index < len(types) and types[index] == int(gguf.TokenType.NORMAL):
            types[index] = int(gguf.TokenType.CONTROL)
    out: Metadata = {
        gguf.Keys.Tokenizer.MODEL: (model, T.STRING),
        gguf.Keys.Tokenizer.LIST: ([t.decode("utf-8", errors="replace") if isinstance(t, bytes) else t for t in tokens], T.STRING),
        gguf.Keys.Tokenizer.TOKEN_TYPE: (types, T.INT32),
    }
    if model == "llama":
        out[gguf.Keys.Tokenizer.SCORES] = (scores, T.FLOAT32)
    else:
        out[gguf.Keys.Tokenizer.PRE] = (PRE_TOKENIZERS.get(model_type, "default"), T.STRING)
    special = gguf.SpecialVocab(folder, load_merges=model == "gpt2", n_vocab=vocab_size)
    return out, special
