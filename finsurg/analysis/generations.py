"""What users see: greedy answers under a surgery, judged by the pack's phrase rules, and how many off-topic
answers stay the base's.

Answers are generated in left-padded batches with plain PyTorch hooks, never stopping early, so the base and
each variant answer the same questions under the same batching.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from finsurg.analysis.batching import chunked, left_pad
from finsurg.models.loading import prompt_ids
from finsurg.packs import GenerationRules
from finsurg.steer.arch import Architecture
from finsurg.steer.findings import Judged
from finsurg.steer.hooks import offsets_added
from finsurg.steer.surgery import Surgery

UNCHANGED_TOKENS = 24  # an off-topic answer is unchanged when its first this many tokens are the base's
ANSWER_TOKENS = 48


@dataclass(frozen=True)
class Sampling:
    """Sampled rather than greedy answers: `samples` per question at `temperature`, seeded per batch."""

    samples: int = 4
    temperature: float = 0.7
    seed: int = 0


def greedy_answers(
    model,
    tokenizer,
    arch: Architecture,
    questions: Sequence[str],
    new_tokens: int,
    surgery: Surgery | None = None,
    batch_size: int = 16,
    sampling: Sampling | None = None,
) -> list[list[int]]:
    """Token ids of each question's greedy answer under the surgery; with `sampling`, each question's samples
    instead, one after another."""
    answers = []
    device = model.get_input_embeddings().weight.device
    drawn = {"do_sample": False} if sampling is None else _drawn(sampling)
    with torch.inference_mode(), offsets_added(model, surgery or Surgery(), arch):
        for index, chunk in enumerate(chunked([prompt_ids(tokenizer, q) for q in questions], batch_size)):
            ids, mask = left_pad(tokenizer, chunk)
            if sampling is not None:
                torch.manual_seed(sampling.seed + index)
            out = model.generate(
                ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                eos_token_id=None,
                pad_token_id=tokenizer.pad_token_id,
                **drawn,
            )
            answers += out[:, ids.shape[1] :].tolist()
    return answers


def _drawn(sampling: Sampling) -> dict:
    """Plain temperature sampling: no top-k or top-p cut that a model's generation config may carry."""
    return {
        "do_sample": True,
        "temperature": sampling.temperature,
        "top_k": 0,
        "top_p": 1.0,
        "num_return_sequences": sampling.samples,
    }


def texts(tokenizer, answers: Sequence[Sequence[int]]) -> list[str]:
    """Each answer's text, cut at its first end token."""
    return [tokenizer.decode(cut(tokens, tokenizer.eos_token_id), skip_special_tokens=True) for tokens in answers]


def cut(tokens: Sequence[int], eos: int | None) -> list[int]:
    """An answer's tokens up to its first end token."""
    tokens = list(tokens)
    return tokens[: tokens.index(eos)] if eos is not None and eos in tokens else tokens


def judge(texts: Sequence[str], rules: GenerationRules) -> Judged:
    """The share of answers each rule set matches (case-insensitive)."""
    shares = {}
    for side in ("positive", "negative"):
        patterns = [re.compile(rule, re.IGNORECASE) for rule in getattr(rules, side)]
        shares[side] = sum(any(p.search(text) for p in patterns) for text in texts) / len(texts)
    return Judged(**shares)


def unchanged(base: Sequence[Sequence[int]], steered: Sequence[Sequence[int]], tokens: int = UNCHANGED_TOKENS) -> float:
    """The share of answers whose first `tokens` tokens equal the base's."""
    return sum(list(a[:tokens]) == list(b[:tokens]) for a, b in zip(base, steered)) / len(base)
