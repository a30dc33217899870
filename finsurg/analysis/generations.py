"""What users see: greedy answers under a surgery, judged by the pack's phrase rules, and how many off-topic
answers stay the base's.

Answers are generated in left-padded batches with plain PyTorch hooks, never stopping early, so the base and
each variant answer the same questions under the same batching.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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


def greedy_answers(
    model,
    tokenizer,
    arch: Architecture,
    questions: Sequence[str],
    new_tokens: int,
    surgery: Surgery | None = None,
    batch_size: int = 16,
) -> list[list[int]]:
    """Greedy token ids of each question's answer under the surgery."""
    answers = []
    device = model.get_input_embeddings().weight.device
    with torch.inference_mode(), offsets_added(model, surgery or Surgery(), arch):
        for chunk in chunked([prompt_ids(tokenizer, q) for q in questions], batch_size):
            ids, mask = left_pad(tokenizer, chunk)
            out = model.generate(
                ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=tokenizer.pad_token_id,
            )
            answers += out[:, ids.shape[1] :].tolist()
    return answers


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
