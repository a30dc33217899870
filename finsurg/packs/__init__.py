"""Behaviour packs: the data one behaviour needs (see `finsurg.packs.pack`), its typed files and its defaults."""

from finsurg.packs.manifest import (
    AnswerPair,
    AnswerSplits,
    CardWording,
    GenerationRules,
    Manifest,
    NeutralReply,
    OffTopicSplits,
    joined_disclaimers,
)
from finsurg.packs.pack import DEFAULT_PACK, Category, Pack, builtin_names

__all__ = [
    "DEFAULT_PACK",
    "AnswerPair",
    "AnswerSplits",
    "CardWording",
    "Category",
    "GenerationRules",
    "Manifest",
    "NeutralReply",
    "OffTopicSplits",
    "Pack",
    "builtin_names",
    "joined_disclaimers",
]
