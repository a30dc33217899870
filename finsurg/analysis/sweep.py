"""The dial: held-out preference for positive vs negative continuations, and neutral-text
perplexity, across a range of alpha."""

from __future__ import annotations

import math

from finsurg import progress
from finsurg.analysis.scoring import continuation_logprobs
from finsurg.models.loading import prompt_ids
from finsurg.models.source import ResolvedModel
from finsurg.packs import Pack
from finsurg.steer.hooks import offset_hooks
from finsurg.steer.recipe import Recipe


def preference_items(tokenizer, prompts: Pack) -> list[tuple[list[int], list[int]]]:
    """Held-out positive and negative prompts, each followed by every positive then negative continuation."""
    heldout = prompts.positive.heldout + prompts.negative.heldout
    pairs = list(zip(prompts.manifest.continuations.positive, prompts.manifest.continuations.negative))
    items = []
    for text in heldout:
        context = prompt_ids(tokenizer, text)
        for good, bad in pairs:
            items.append((context, tokenizer.encode(good, add_special_tokens=False)))
            items.append((context, tokenizer.encode(bad, add_special_tokens=False)))
    return items


def neutral_items(tokenizer, prompts: Pack) -> list[tuple[list[int], list[int]]]:
    items = []
    for text in prompts.neutral_text:
        ids = tokenizer(text, add_special_tokens=True).input_ids
        items.append((ids[:1], ids[1:]))
    return items


def measure(bridge, tokenizer, prefs, neutral, hooks, batch_size: int, bar=None) -> dict:
    update = bar.update if bar is not None else (lambda n: None)
    scores = continuation_logprobs(bridge, tokenizer, prefs, hooks, batch_size, update)
    margins = [scores[i][0] - scores[i + 1][0] for i in range(0, len(scores), 2)]
    text = continuation_logprobs(bridge, tokenizer, neutral, hooks, batch_size, update)
    nll = -sum(total for total, _ in text) / sum(count for _, count in text)
    return {
        "preference": sum(m > 0 for m in margins) / len(margins),
        "log_odds": sum(margins) / len(margins),
        "perplexity": math.exp(nll),
    }


def run_sweep(
    bridge, tokenizer, model: ResolvedModel, prompts: Pack, recipe: Recipe, alphas, batch_size: int = 16
) -> dict:
    prefs, neutral = preference_items(tokenizer, prompts), neutral_items(tokenizer, prompts)
    rows = []
    with progress.bar(total=len(alphas) * (len(prefs) + len(neutral)), desc="phase 5: alpha sweep") as bar:
        for alpha in alphas:
            hooks = offset_hooks(recipe.surgery(alpha), model.arch, model.config) if alpha else []
            rows.append({"alpha": alpha, **measure(bridge, tokenizer, prefs, neutral, hooks, batch_size, bar)})
    base = next(row for row in rows if row["alpha"] == 0.0)
    for row in rows:
        row["perplexity_change"] = row["perplexity"] / base["perplexity"] - 1.0
    return {"pairs": len(prefs) // 2, "neutral_texts": len(neutral), "rows": rows}
