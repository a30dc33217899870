"""What a pack's files hold, as typed models: the manifest, paired answers, conversations, prose and rules."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MIN_TRAIN = 4
GENERIC_DISCLAIMER = (
    "Research artifact: the outputs of a steered model are unvetted model text. Check them before relying on them."
)


def joined_disclaimers(disclaimers) -> str:
    """Several packs' disclaimers as one text, each once, in order: what a bundle carries."""
    return " ".join(dict.fromkeys(disclaimers))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pair(_Strict):
    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)


class AnswerPair(_Strict):
    """One question with a positive-behaviour answer and a negative-behaviour answer."""

    question: str = Field(min_length=1)
    positive: str = Field(min_length=1)
    negative: str = Field(min_length=1)


class AnswerSplits(_Strict):
    description: str = ""
    train: list[AnswerPair] = Field(min_length=1)
    tune: list[AnswerPair] = Field(min_length=1)
    heldout: list[AnswerPair] = Field(min_length=1)


class NeutralReply(_Strict):
    question: str = Field(min_length=1)
    reply: str = Field(min_length=1)


class NeutralReplies(_Strict):
    description: str = ""
    items: list[NeutralReply] = Field(min_length=1)


class OffTopicSplits(_Strict):
    """Conversations off the pack's topic: the topic condition learns from train, tuning costs on tune."""

    description: str = ""
    train: list[NeutralReply] = Field(min_length=MIN_TRAIN)
    tune: list[NeutralReply] = Field(min_length=1)
    heldout: list[NeutralReply] = Field(min_length=1)


class ProseSplits(_Strict):
    """On-topic prose that explains and does not do the behaviour: the on-topic capability cost."""

    description: str = ""
    tune: list[str] = Field(min_length=1)
    heldout: list[str] = Field(min_length=1)


class GenerationRules(_Strict):
    """Case-insensitive regular expressions that judge an answer: does it do the positive behaviour, or the
    negative one? The labels name each in reports and cards."""

    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)
    positive_label: str = "matches the positive rules"
    negative_label: str = "matches the negative rules"


class SystemPrompts(_Strict):
    """A plain system prompt for each direction: the prompting baseline steering is compared with."""

    positive: str = Field(min_length=1)
    negative: str = Field(min_length=1)


class CardWording(_Strict):
    positive_direction: str = "toward the positive behaviour (positive alpha)"
    negative_direction: str = "toward the negative behaviour (negative alpha)"
    example_prompt: str = "Hello! What can you help me with?"
    tags: list[str] = []


class Manifest(_Strict):
    """manifest.json. File fields name a file in the pack or a shipped default as `generic:NAME`; a field left
    out is read from the pack's file of the usual name when there is one, else derived from the paired answers
    or taken from the shipped defaults (`finsurg pack check` says which)."""

    name: str | None = None
    # printed with every output and written on every card
    disclaimer: str = GENERIC_DISCLAIMER
    # question categories: {"train": [...], "heldout": [...]} prompt files
    positive: str | None = None
    negative: str | None = None
    neutral: str | None = None
    # matched in the category prompts (attention to them is phase 3's head score), not in answers
    keywords: list[str] | None = Field(None, min_length=1)
    # only the --no-tune sweep reads these
    continuations: Pair | None = None
    probes: list[str] | None = Field(None, min_length=1)
    tokens: Pair | None = None
    neutral_text: str | None = None
    # lm-eval tasks in tasks/, each with the metric that sums it up
    tasks: dict[str, str] = {}
    # the task whose two choices are (positive answer, negative answer): its log-odds is reported
    preference_task: str | None = None
    task_titles: dict[str, str] = {}
    verification_prompts: str | None = None
    surgery_prompts: list[str] = []
    card: CardWording = CardWording()
    # paired answers (train/tune/heldout, or one list split by question) and neutral replies
    answers: str | None = None
    neutral_replies: str | None = None
    system_prompts: SystemPrompts | None = None
    # what conditional surgery needs: off-topic conversations, on-topic prose, and rules that judge answers
    off_topic: str | None = None
    topic_prose: str | None = None
    generation_rules: GenerationRules | None = None
