"""Tokenising task examples once and batching them with dynamic padding."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader


class Encoded(torch.utils.data.Dataset):
    """Token ids and labels of a list of examples, tokenised once up front."""

    def __init__(self, tokenizer, examples: list, max_length: int, regression: bool = False):
        texts_a = [e[0] for e in examples]
        texts_b = [e[1] for e in examples] if any(e[1] is not None for e in examples) else None
        encoded = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
        self.items = [
            {key: encoded[key][i] for key in encoded.keys()} for i in range(len(examples))
        ]
        dtype = torch.float32 if regression else torch.long
        self.labels = torch.tensor([e[2] for e in examples], dtype=dtype)
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[dict, torch.Tensor]:
        return self.items[index], self.labels[index]

    def collate(self, batch: list) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item, _ in batch)
        out = {}
        for key in batch[0][0]:
            pad = self.pad_id if key == "input_ids" else 0
            out[key] = torch.tensor([item[key] + [pad] * (width - len(item[key])) for item, _ in batch])
        out["labels"] = torch.stack([label for _, label in batch])
        return out


def train_loader(data: Encoded, batch_size: int, seed: int) -> DataLoader:
    # the shuffling generator is seeded per job, so a resumed run sees the same order
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=data.collate)


def eval_loader(data: Encoded, batch_size: int) -> DataLoader:
    return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=data.collate)
