"""Left-padded batches of token-id sequences (the tokenizer pads), so the last column is every sequence's final token."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def left_pad(tokenizer, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = tokenizer.pad(
        {"input_ids": [list(seq) for seq in sequences]}, padding=True, padding_side="left", return_tensors="pt"
    )
    return batch["input_ids"], batch["attention_mask"]


def padded(tokenizer, sequences: Sequence[Sequence[int]], size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The sequences in left-padded batches of `size`: (ids, attention mask) each."""
    for chunk in chunked(sequences, size):
        yield left_pad(tokenizer, chunk)


def chunked(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def ensure_pad_token(tokenizer):
    """Tokenizers without a pad token pad with EOS (masked out, so its value never matters)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
