"""Answer-behaviour measurement on a plain transformers model: per-item log-odds and neutral-text KL.

An item is a question with a positive and a negative answer. Its margin is
log P(positive answer | question) − log P(negative answer | question), summed over the answer's
tokens, with the question rendered through the chat template (optionally after a system prompt).
A steering shift is the change of that margin from the base; its capability cost is the mean
per-token KL from the base on neutral replies.

Offsets change nothing before the first steered layer, so the stream entering each layer is kept
from one unsteered pass, and a steered pass starts at the first layer it steers.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from finsurg.analysis.batching import chunked, left_pad
from finsurg.models.loading import prompt_ids
from finsurg.packs import AnswerPair, NeutralReply
from finsurg.steer.arch import Architecture
from finsurg.steer.hooks import offsets_added
from finsurg.steer.surgery import Surgery


@dataclass(frozen=True)
class Scored:
    """Token ids of a context and of the continuation whose log-probability is wanted."""

    context: list[int]
    continuation: list[int]


def answer_items(tokenizer, pairs: Sequence[AnswerPair], system: str | None = None) -> list[Scored]:
    """Each pair as two items, positive then negative, after the same rendered question."""
    items = []
    for pair in pairs:
        context = prompt_ids(tokenizer, pair.question, system)
        for answer in (pair.positive, pair.negative):
            items.append(Scored(context, tokenizer.encode(answer, add_special_tokens=False)))
    return items


def reply_items(tokenizer, replies: Sequence[NeutralReply], system: str | None = None) -> list[Scored]:
    return [
        Scored(prompt_ids(tokenizer, r.question, system), tokenizer.encode(r.reply, add_special_tokens=False))
        for r in replies
    ]


def text_items(tokenizer, texts: Sequence[str]) -> list[Scored]:
    """Plain text, each token after the first scored."""
    items = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True).input_ids
        items.append(Scored(ids[:1], ids[1:]))
    return items


class Streams:
    """The unsteered stream entering each layer of each batch, kept in files of a scratch directory rather than in
    memory, so a search's memory does not grow with its items (the page cache keeps what is read often)."""

    def __init__(self) -> None:
        self.scratch = tempfile.TemporaryDirectory(prefix="finsurg-streams-")  # removed with this object
        self.layers: dict[int, int] = {}  # batch -> layers kept

    def keep(self, batch: int, state: torch.Tensor) -> None:
        layer = self.layers.get(batch, 0)
        torch.save(state.contiguous().cpu(), Path(self.scratch.name) / f"{batch}-{layer}.pt")
        self.layers[batch] = layer + 1

    def entering(self, batch: int, layer: int) -> torch.Tensor:
        return torch.load(Path(self.scratch.name) / f"{batch}-{layer}.pt")


class Batches:
    """Fixed left-padded batches of items, with the stream entering every layer on the unsteered model.

    Each item yields its summed continuation log-probability, or with `distributions` its whole
    log-softmax at each continuation position (float32), which a KL needs. Items scored once, on the
    unsteered model only, need no streams (`keep_streams=False`); a steered run then passes every layer.
    """

    def __init__(
        self,
        model,
        tokenizer,
        arch: Architecture,
        items: list[Scored],
        batch_size: int = 16,
        distributions: bool = False,
        keep_streams: bool = True,
    ):
        self.model, self.arch, self.items, self.distributions = model, arch, items, distributions
        self.batches = []
        for chunk in chunked(items, batch_size):
            ids, mask = left_pad(tokenizer, [item.context + item.continuation for item in chunk])
            self.batches.append((ids, mask, chunk))
        self.streams = Streams() if keep_streams else None
        self._capturing: int | None = None
        layers = model.get_submodule(arch.layers) if keep_streams else []
        handles = [layer.register_forward_pre_hook(self._capture, with_kwargs=True) for layer in layers]
        try:
            # the unsteered pass also keeps what enters each layer
            self.base = self._run(Surgery(), capture=keep_streams)
        finally:
            for handle in handles:
                handle.remove()

    def _capture(self, module, args, kwargs):
        if self._capturing is not None:
            self.streams.keep(self._capturing, _hidden(args, kwargs))

    def run(self, surgery: Surgery, bar=None) -> list:
        """Per item, under the surgery: its summed log-probability, or its log-softmax rows."""
        return self.base if not surgery else self._run(surgery, bar)

    def _run(self, surgery: Surgery, bar=None, capture: bool = False) -> list:
        start = min(surgery.layers, default=0)
        out = []
        for index, (ids, mask, chunk) in enumerate(self.batches):
            keep = max(len(item.continuation) for item in chunk) + 1
            self._capturing = index if capture else None
            try:
                with (
                    torch.inference_mode(),
                    offsets_added(self.model, surgery, self.arch),
                    _start_at(
                        self.model,
                        self.arch,
                        start,
                        None if capture or start <= 0 or self.streams is None else self.streams.entering(index, start),
                    ),
                ):
                    device = self.model.get_input_embeddings().weight.device
                    logits = self.model(
                        input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, logits_to_keep=keep
                    ).logits.cpu()
            finally:
                self._capturing = None
            for row, item in enumerate(chunk):
                length = len(item.continuation)
                log_probs = torch.log_softmax(logits[row, keep - length - 1 : keep - 1].double(), dim=-1)
                if self.distributions:
                    out.append(log_probs.float())
                else:
                    out.append(float(log_probs.gather(-1, torch.tensor(item.continuation)[:, None]).sum()))
            if bar is not None:
                bar.update(len(chunk))
        return out


def _hidden(args, kwargs) -> torch.Tensor:
    return (args[0] if args else kwargs["hidden_states"]).detach()


@contextmanager
def _start_at(model, arch: Architecture, start: int, entering: torch.Tensor | None) -> Iterator[None]:
    """Run only the decoder layers from `start` on, fed `entering`, the unsteered stream that enters layer `start`."""
    if start <= 0 or entering is None:
        yield
        return
    parent_name, _, attribute = arch.layers.rpartition(".")
    parent = model.get_submodule(parent_name)
    layers = getattr(parent, attribute)

    def feed(module, args, kwargs):
        if args:
            return (entering, *args[1:]), kwargs
        return args, kwargs | {"hidden_states": entering}

    handle = layers[start].register_forward_pre_hook(feed, with_kwargs=True)
    setattr(parent, attribute, torch.nn.ModuleList(list(layers)[start:]))
    try:
        yield
    finally:
        setattr(parent, attribute, layers)
        handle.remove()


def margins(scores: list[float]) -> list[float]:
    """Positive-minus-negative log-likelihood per pair, from answer_items' order."""
    return [scores[i] - scores[i + 1] for i in range(0, len(scores), 2)]


class Divergence:
    """Mean per-token KL(base || steered) over fixed replies."""

    def __init__(self, model, tokenizer, arch: Architecture, replies: Sequence[NeutralReply], batch_size: int = 16):
        self.batches = Batches(model, tokenizer, arch, reply_items(tokenizer, replies), batch_size, distributions=True)

    def __call__(self, surgery: Surgery, bar=None) -> float:
        total, count = 0.0, 0
        for base, steered in zip(self.batches.base, self.batches.run(surgery, bar)):
            # float32 log-probabilities renormalised in float64, and each position's KL clamped at 0: rounding
            # otherwise leaves tiny negatives where the two distributions agree
            p, q = base.double().log_softmax(-1), steered.double().log_softmax(-1)
            per_position = F.kl_div(q, p, log_target=True, reduction="none").sum(-1)
            total += float(per_position.clamp_min(0.0).sum())
            count += base.shape[0]
        return total / count


class Perplexity:
    """Perplexity of fixed texts, against the unsteered model's."""

    def __init__(self, model, tokenizer, arch: Architecture, texts: Sequence[str], batch_size: int = 16):
        self.items = text_items(tokenizer, texts)
        self.batches = Batches(model, tokenizer, arch, self.items, batch_size)
        self.tokens = sum(len(item.continuation) for item in self.items)
        self.base = self._perplexity(self.batches.base)

    def _perplexity(self, scores: list[float]) -> float:
        return math.exp(-sum(scores) / self.tokens)

    def change(self, surgery: Surgery) -> float:
        """The relative change of perplexity under the surgery (0.05 is 5% higher)."""
        return self._perplexity(self.batches.run(surgery)) / self.base - 1.0


class Measure:
    """The two figures a steering is judged by, on fixed items: per-pair margins and neutral KL."""

    def __init__(
        self,
        model,
        tokenizer,
        arch: Architecture,
        pairs: Sequence[AnswerPair],
        replies: Sequence[NeutralReply],
        batch_size: int = 16,
    ):
        self.answers = Batches(model, tokenizer, arch, answer_items(tokenizer, pairs), batch_size)
        self.kl = Divergence(model, tokenizer, arch, replies, batch_size)  # mean per-token KL on the neutral replies
        self.base_margins = margins(self.answers.base)
        self.pairs = len(pairs)

    def shifts(self, surgery: Surgery, bar=None) -> list[float]:
        steered = margins(self.answers.run(surgery, bar))
        return [after - before for after, before in zip(steered, self.base_margins)]
