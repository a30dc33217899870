"""Log-likelihood of token continuations through the bridge, batched, with optional hooks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from finsurg.analysis.batching import chunked, left_pad


def continuation_logprobs(
    bridge,
    tokenizer,
    items: Sequence[tuple[list[int], list[int]]],
    hooks=(),
    batch_size: int = 16,
    on_batch: Callable[[int], None] = lambda n: None,
) -> list[tuple[float, int]]:
    """For each (context ids, continuation ids): sum of log P(continuation) and its token count."""
    results = []
    for batch in chunked(list(items), batch_size):
        ids, mask = left_pad(tokenizer, [context + continuation for context, continuation in batch])
        with torch.no_grad(), bridge.hooks(fwd_hooks=list(hooks)):
            logits = bridge(ids, attention_mask=mask)
        for row, (_, continuation) in enumerate(batch):
            # only the positions that predict the continuation: a full-vocab softmax everywhere dominates the cost
            predicting = logits[row, -len(continuation) - 1 : -1].double()
            scored = torch.log_softmax(predicting, dim=-1).gather(-1, ids[row, -len(continuation) :, None])
            results.append((float(scored.sum()), len(continuation)))
        on_batch(len(batch))
    return results
