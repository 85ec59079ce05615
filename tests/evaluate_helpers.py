"""A tiny Llama and a word-level tokenizer over a 60-word vocabulary, for the evaluation tests.

One word is one token, so a text's token count (and so the windows cut from it) is known exactly.
"""
from __future__ import annotations

import random

import torch
import transformers

WORDS = (
    "the a cat dog bird fish tree river stone house city road king queen music light dark water fire "
    "earth wind cold warm old new small large red green blue runs sees eats sings falls grows flows "
    "stands sleeps finds and or but with from into over under near far today night morning always "
    "never often here there"
).split()


def word_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({word: i + 3 for i, word in enumerate(WORDS)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", name_or_path="eval-words"
    )


def random_words(count: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(count))


def tiny_llama(vocab_size: int = 64, seed: int = 0, max_positions: int = 256):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        bos_token_id=1, eos_token_id=2,
    )
    config.use_cache = False
    return transformers.LlamaForCausalLM(config).eval()
