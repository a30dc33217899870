"""The topic condition: per layer, a logistic probe on the MLP's normed input that tells the assistant's turn in
on-topic conversations (the prompt's last token, whose output is the answer's first token, and the answer) from the
tokens of off-topic ones.

The graft's gate reads exactly this input (finsurg.steer.graft), so a probe is a gate once its threshold and
sharpness are set: gate z = m · (probe logit − δ), tuned on the tune split. Probes learn from the train
splits (the assistant's turns that answer the pack's on-topic questions, against its off-topic conversations and
neutral questions) and are judged on held-out, per token and per conversation (the mean logit over its tokens).
The answer's course is set by its first tokens, so the positives are the answer's tokens rather than the
question's: a gate learnt from both opened on fewer than half of the first answer tokens at a threshold no
off-topic token passes.
The tokens every conversation shares (the chat template's opening) carry no topic: the gate must stay shut
there, so they are negatives, weighted as one conversation's worth of tokens each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from finsurg.analysis.batching import chunked, left_pad
from finsurg.models.loading import prompt_ids
from finsurg.packs import AnswerPair, NeutralReply
from finsurg.steer.arch import Architecture
from finsurg.steer.findings import Auroc, OpenShares
from finsurg.steer.graft import Gate

STORED = torch.float16  # token features are held at half precision: the probe needs no more


def with_answers(tokenizer, pairs: Sequence[AnswerPair], count: int | None = None) -> list[tuple[list[int], int]]:
    """Each question with (the first `count` tokens of) each of its answers, and how many answer tokens it keeps."""
    out = []
    for pair in pairs:
        for answer in (pair.positive, pair.negative):
            start = tokenizer.encode(answer, add_special_tokens=False)[:count]
            out.append((prompt_ids(tokenizer, pair.question) + start, len(start)))
    return out


def on_topic(tokenizer, pairs: Sequence[AnswerPair]) -> list[list[int]]:
    """Each question with each of its answers, as one conversation's token ids."""
    return [ids for ids, _ in with_answers(tokenizer, pairs)]


def off_topic(tokenizer, items: Sequence[NeutralReply]) -> list[list[int]]:
    return [
        prompt_ids(tokenizer, item.question) + tokenizer.encode(item.reply, add_special_tokens=False) for item in items
    ]


def user_turns(tokenizer, questions: Sequence[str]) -> list[list[int]]:
    """Questions alone, as rendered for the model to answer."""
    return [prompt_ids(tokenizer, question) for question in questions]


def shared_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence shares (the chat template's opening), short of the shortest."""
    shortest = min(len(s) for s in sequences)
    length = 0
    while length < shortest - 1 and all(s[length] == sequences[0][length] for s in sequences):
        length += 1
    return length


@dataclass
class Tokens:
    """The MLP inputs of conversations' tokens at some layers, with each token's conversation."""

    features: dict[int, torch.Tensor]  # layer -> [tokens, hidden]
    conversation: torch.Tensor  # [tokens]: index of the conversation a token belongs to


def mlp_inputs(
    model,
    tokenizer,
    arch: Architecture,
    sequences: list[list[int]],
    layers: list[int],
    skip: int | Sequence[int],
    batch_size: int,
) -> Tokens:
    """Each layer's MLP input at every token past the first `skip` of each sequence (or of the sequence's own
    count, where `skip` is a list), on the unsteered model."""
    skips = [skip] * len(sequences) if isinstance(skip, int) else list(skip)
    route = arch.grafting(arch.family)
    captured: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(module, args):
            captured[layer] = args[0].detach()

        return hook

    handles = [
        model.get_submodule(route.mlp.format(layer=layer)).register_forward_pre_hook(keep(layer)) for layer in layers
    ]
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    owners: list[int] = []
    device = model.get_input_embeddings().weight.device
    try:
        for start, chunk in zip(range(0, len(sequences), batch_size), chunked(sequences, batch_size)):
            ids, mask = left_pad(tokenizer, chunk)
            with torch.inference_mode():
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, logits_to_keep=1)
            width = ids.shape[1]
            for row, sequence in enumerate(chunk):
                first = width - len(sequence) + skips[start + row]
                for layer in layers:
                    parts[layer].append(captured[layer][row, first:].to("cpu", STORED))
                owners += [start + row] * (width - first)
    finally:
        for handle in handles:
            handle.remove()
    return Tokens({layer: torch.cat(rows) for layer, rows in parts.items()}, torch.tensor(owners))


@dataclass
class Probe:
    """One layer's probe: logit = scale · (direction · x̂ − threshold)."""

    direction: torch.Tensor  # unit, float32
    threshold: float
    scale: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * (features.float() @ self.direction - self.threshold)

    def gate(self, shift: float, sharpness: float) -> tuple[float, float]:
        """The gate z = sharpness · (logit − shift), as (threshold along the direction, sharpness along it)."""
        return self.threshold + shift / self.scale, sharpness * self.scale

    def as_gate(self, shift: float, sharpness: float) -> Gate:
        threshold, slope = self.gate(shift, sharpness)
        return Gate((slope * self.direction.double()).float(), -slope * threshold)


def fit(on: torch.Tensor, off: torch.Tensor, seed: int) -> Probe:
    """A class-balanced L2 logistic regression of on-topic against off-topic tokens."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    features = torch.cat([on, off]).float().numpy()
    labels = [1] * on.shape[0] + [0] * off.shape[0]
    scaler = StandardScaler().fit(features)
    model = LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000, random_state=seed)
    model.fit(scaler.transform(features), labels)
    weight = torch.tensor(model.coef_[0] / scaler.scale_, dtype=torch.float64)
    bias = float(model.intercept_[0]) - float(weight @ torch.tensor(scaler.mean_, dtype=torch.float64))
    norm = float(weight.norm())
    return Probe((weight / norm).float(), -bias / norm, norm)


def auroc(on: torch.Tensor, off: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    scores = torch.cat([on, off]).double().numpy()
    return float(roc_auc_score([1] * len(on) + [0] * len(off), scores))


def conversation_means(logits: torch.Tensor, conversation: torch.Tensor) -> torch.Tensor:
    count = int(conversation.max()) + 1
    sums = torch.zeros(count, dtype=torch.float64).index_add_(0, conversation, logits.double())
    return sums / torch.bincount(conversation, minlength=count).double()


class Probes(dict):
    """Each layer's probe, fitted on the train tokens when first asked for; `prefix` holds the shared opening."""

    def __init__(self, on: Tokens, off: Tokens, prefix: Tokens | None, seed: int):
        super().__init__()
        self.on, self.off, self.prefix, self.seed = on, off, prefix, seed
        self.repeats = max(1, int(off.conversation.max()) + 1) // 4  # the opening: a quarter of the conversations

    def __missing__(self, layer: int) -> Probe:
        negatives = self.off.features[layer]
        if self.prefix is not None:
            negatives = torch.cat([negatives, self.prefix.features[layer].repeat(self.repeats, 1)])
        probe = self[layer] = fit(self.on.features[layer], negatives, self.seed)
        return probe


def judged(probes: dict[int, Probe], on: Tokens, off: Tokens) -> dict[str, Auroc]:
    """Held-out AUROC of each layer's probe, per token and per conversation, by layer."""
    rows = {}
    for layer, probe in probes.items():
        on_logits, off_logits = probe.logits(on.features[layer]), probe.logits(off.features[layer])
        rows[str(layer)] = Auroc(
            token_auroc=auroc(on_logits, off_logits),
            conversation_auroc=auroc(
                conversation_means(on_logits, on.conversation), conversation_means(off_logits, off.conversation)
            ),
        )
    return rows


def opens(gates: dict[int, Gate], tokens: Tokens) -> torch.Tensor:
    """Per token, the share of the gated layers whose gate opens past half."""
    return torch.stack([(gate.opening(tokens.features[layer]) > 0.5).double() for layer, gate in gates.items()]).mean(0)


def positions(conversation: torch.Tensor) -> torch.Tensor:
    """Each token's place among its conversation's kept tokens (0 for the first)."""
    index = torch.arange(len(conversation))
    changed = torch.ones_like(conversation, dtype=torch.bool)
    changed[1:] = conversation[1:] != conversation[:-1]
    return index - torch.cummax(torch.where(changed, index, 0), 0).values


def open_shares(gates: dict[int, Gate], on: Tokens, off: Tokens, questions: Tokens, first: Tokens) -> OpenShares:
    """The share of held-out tokens whose gate opens past half, over the gated layers: on topic and off it, on the
    on-topic questions alone, and on the first answer tokens of on-topic conversations, also by position."""
    first_open = opens(gates, first)
    place = positions(first.conversation)
    return OpenShares(
        on_topic=float(opens(gates, on).mean()),
        off_topic=float(opens(gates, off).mean()),
        questions=float(opens(gates, questions).mean()),
        first_answer_tokens=float(first_open.mean()),
        by_answer_position=[float(first_open[place == k].mean()) for k in range(int(place.max()) + 1)],
    )
