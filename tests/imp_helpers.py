"""A tiny random BERT classifier folder and a small synthetic sentiment task.

For the `llmprune imp` and `glue` tests, without the real model: everything is built
from a seed in well under a second.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak"]
FILLER = ["the", "a", "film", "movie", "plot", "was", "is", "very", "quite", "and", "acting", "story"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_bert_folder(folder: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A randomly initialised BertModel (encoder + pooler, no head) with a word-level tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + POSITIVE + NEGATIVE + FILLER) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    config = BertConfig(vocab_size=len(SPECIAL + POSITIVE + NEGATIVE + FILLER), hidden_size=hidden,
                        num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=64)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def synthetic_rows(count: int, seed: int = 0) -> list[dict]:
    """Sentences whose label (1 positive, 0 negative) is the polarity of their one opinion word."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def synthetic_task_file(path: Path, count: int = 200, seed: int = 0) -> Path:
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(synthetic_rows(count, seed))
    return path
