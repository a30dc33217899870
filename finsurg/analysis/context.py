"""What every answer-behaviour step of an analysis reads, as one object: the model, its tokenizer, its family's
descriptor, the behaviour pack and the batch size; and the measurements built on them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from finsurg.analysis import topic_probes
from finsurg.analysis.generations import Sampling, greedy_answers
from finsurg.analysis.measures import Divergence, Measure, Perplexity
from finsurg.packs import AnswerPair, AnswerSplits, NeutralReply, Pack
from finsurg.steer.arch import Architecture
from finsurg.steer.surgery import Surgery


@dataclass(frozen=True)
class AnalysisContext:
    model: object  # a transformers causal LM, in its plain form (never the bridge's)
    tokenizer: object
    arch: Architecture
    pack: Pack
    batch_size: int = 16
    tune_pairs: int | None = None  # the most tune pairs the search reads per trial

    @property
    def depth(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def pairs(self) -> AnswerSplits:
        """The pack's paired answers, the tune split cut to its first `tune_pairs` (split order)."""
        splits = self.pack.answer_pairs()
        return splits.model_copy(update={"tune": splits.tune[: self.tune_pairs]})

    def measure(self, pairs: Sequence[AnswerPair], replies: Sequence[NeutralReply]) -> Measure:
        return Measure(self.model, self.tokenizer, self.arch, pairs, replies, self.batch_size)

    def divergence(self, replies: Sequence[NeutralReply]) -> Divergence:
        return Divergence(self.model, self.tokenizer, self.arch, replies, self.batch_size)

    def perplexity(self, texts: Sequence[str]) -> Perplexity:
        return Perplexity(self.model, self.tokenizer, self.arch, texts, self.batch_size)

    def greedy(
        self,
        questions: Sequence[str],
        new_tokens: int,
        surgery: Surgery | None = None,
        sampling: Sampling | None = None,
    ) -> list[list[int]]:
        """Greedy answers (or with `sampling`, sampled ones) to the questions under the surgery."""
        return greedy_answers(
            self.model, self.tokenizer, self.arch, questions, new_tokens, surgery, self.batch_size, sampling
        )

    def mlp_inputs(self, sequences: list[list[int]], layers: list[int], skip: int | list[int]) -> topic_probes.Tokens:
        return topic_probes.mlp_inputs(self.model, self.tokenizer, self.arch, sequences, layers, skip, self.batch_size)
