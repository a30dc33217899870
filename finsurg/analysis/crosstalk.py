"""Cross-talk in a bundle: each behaviour, on its own held-out split, in the bundle against its recipe alone.

Measured with the surgeries' hooks on the base, which a bundle's variants equal (their proof shows it):
- each behaviour's mean log-odds shift on its held-out pairs, in the bundle and alone;
- its greedy answers to its held-out questions, judged by its pack's rules, and how many stay the answers of
  its recipe alone (the other behaviours' gates leave its topic alone);
- off-topic greedy answers against the base's, on conversations off every behaviour's topic that no
  condition learnt from (held out, or in no pack's train or tune split);
- how often each behaviour's gate opens on every other behaviour's held-out conversations.
"""

from __future__ import annotations

import math

import torch

from finsurg import progress
from finsurg.analysis import topic_probes
from finsurg.analysis.batching import ensure_pad_token
from finsurg.analysis.generations import ANSWER_TOKENS, UNCHANGED_TOKENS, greedy_answers, judge, texts, unchanged
from finsurg.analysis.measures import Batches, answer_items, margins
from finsurg.devices import Placement
from finsurg.models.loading import load_model, load_tokenizer
from finsurg.models.source import ResolvedModel
from finsurg.packs import NeutralReply, Pack
from finsurg.steer.bundle import Bundle, Member
from finsurg.steer.bundle_report import BehaviourInBundle, BundleSide, CrossTalkReport
from finsurg.steer.surgery import Surgery

OFF_TOPIC = "off-topic"


class _Behaviour:
    """One behaviour's held-out pairs and questions, scored and answered by the base once."""

    def __init__(self, member: Member, pack: Pack, model, tokenizer, arch, batch_size: int):
        self.member, self.pack = member, pack
        self.model, self.tokenizer, self.arch, self.batch_size = model, tokenizer, arch, batch_size
        self.pairs = pack.answer_pairs().heldout
        self.questions = list(dict.fromkeys(pair.question for pair in self.pairs))
        self.scores = Batches(model, tokenizer, arch, answer_items(tokenizer, self.pairs), batch_size)
        self.base_margins = margins(self.scores.base)
        self.rules = pack.manifest.generation_rules
        self.base_answers = self.answer(None)

    def answer(self, surgery: Surgery | None) -> list[list[int]]:
        return greedy_answers(
            self.model, self.tokenizer, self.arch, self.questions, ANSWER_TOKENS, surgery, self.batch_size
        )

    def shift(self, surgery: Surgery) -> float:
        steered = margins(self.scores.run(surgery))
        return sum(a - b for a, b in zip(steered, self.base_margins)) / len(steered)

    def judged(self, answers: list[list[int]], alpha: float) -> float | None:
        if self.rules is None:
            return None
        shares = judge(texts(self.tokenizer, answers), self.rules)
        return shares.positive if alpha > 0 else shares.negative

    def label(self, alpha: float) -> str:
        if self.rules is None:
            return "positive" if alpha > 0 else "negative"
        return self.rules.positive_label if alpha > 0 else self.rules.negative_label

    def row(self, alpha: float, bundled: Surgery) -> BehaviourInBundle:
        alone = self.member.recipe.surgery(alpha)
        shift_alone, shift_bundle = self.shift(alone), self.shift(bundled)
        answers_alone, answers_bundle = self.answer(alone), self.answer(bundled)
        return BehaviourInBundle(
            behaviour=self.member.name,
            alpha=alpha,
            pairs=len(self.pairs),
            shift_alone=shift_alone,
            shift_in_bundle=shift_bundle,
            shift_kept=shift_bundle / shift_alone if shift_alone else math.nan,
            judged=self.label(alpha),
            judged_base=self.judged(self.base_answers, alpha),
            judged_alone=self.judged(answers_alone, alpha),
            judged_in_bundle=self.judged(answers_bundle, alpha),
            questions=len(self.questions),
            answers_same=unchanged(answers_alone, answers_bundle),
        )


def off_every_topic(packs: list[Pack]) -> list[NeutralReply]:
    """Conversations in every pack's everyday pool and in no pack's train or tune split (the first pack's reply)."""
    pools = [pack.everyday_splits() for pack in packs]
    items = {item.question: item for p in reversed(pools) for item in p.train + p.tune + p.heldout}
    everywhere = set.intersection(*({item.question for item in p.train + p.tune + p.heldout} for p in pools))
    seen = {item.question for p in pools for item in p.train + p.tune}
    return [items[question] for question in sorted(everywhere - seen)]


def crosstalk(
    model: ResolvedModel,
    bundle: Bundle,
    variants: dict[str, dict[str, float]],
    dtype: torch.dtype,
    placement: Placement,
    batch_size: int = 16,
) -> CrossTalkReport:
    """The cross-talk report of a bundle's variants (`variants`: each one's alphas); offsets rounded to `dtype`,
    as the variants hold them."""
    placement.require("measuring the bundle's cross-talk", model.config)
    hf = load_model(model.path, torch.float32, device=placement.device, max_memory=placement.dispatch)
    tokenizer = ensure_pad_token(load_tokenizer(model.path))
    arch = model.arch
    packs = [Pack.load(member.recipe.spec.pack) for member in bundle.members]
    with progress.bar(total=1 + len(variants), desc="bundle: cross-talk on held-out items") as bar:
        behaviours = [_Behaviour(m, p, hf, tokenizer, arch, batch_size) for m, p in zip(bundle.members, packs)]
        off_items = off_every_topic(packs)
        off = [item.question for item in off_items]
        base_off = greedy_answers(hf, tokenizer, arch, off, UNCHANGED_TOKENS, None, batch_size)
        bar.update()
        sides = []
        for variant, alphas in variants.items():
            bundled = bundle.surgery(alphas).rounded(dtype)
            rows = [b.row(alphas[b.member.name], bundled) for b in behaviours]
            kept = unchanged(base_off, greedy_answers(hf, tokenizer, arch, off, UNCHANGED_TOKENS, bundled, batch_size))
            sides.append(
                BundleSide(variant=variant, behaviours=rows, off_topic_unchanged=kept, off_topic_questions=len(off))
            )
            bar.update()
    gates = _gate_table(hf, tokenizer, arch, behaviours, off_items, batch_size)
    return CrossTalkReport(sides=sides, gates=gates)


def _gate_table(model, tokenizer, arch, behaviours: list[_Behaviour], off: list[NeutralReply], batch_size: int) -> dict:
    """Each gated behaviour's open share on every behaviour's held-out conversations and on the off-topic ones."""
    conversations = {b.member.name: topic_probes.on_topic(tokenizer, b.pairs) for b in behaviours}
    conversations[OFF_TOPIC] = topic_probes.off_topic(tokenizer, off)
    skip = topic_probes.shared_prefix([s for group in conversations.values() for s in group])
    gated = {b.member.name: b.member.recipe.gates() for b in behaviours if b.member.recipe.conditional}
    layers = sorted({layer for gates in gated.values() for layer in gates})
    if not layers:
        return {}
    # one pass per conversation group over every gated layer; each gate reads its own layers
    tokens = {
        name: topic_probes.mlp_inputs(model, tokenizer, arch, group, layers, skip, batch_size)
        for name, group in conversations.items()
    }
    return {
        behaviour: {name: float(topic_probes.opens(gates, group).mean()) for name, group in tokens.items()}
        for behaviour, gates in gated.items()
    }
