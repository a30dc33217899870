"""The monitor's option groups: how it is learnt (`monitor export`, `export --monitor`) and how a log is scored
(`monitor score`). Light enough for the settings to import; their defaults live here and nowhere else."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from finsurg.options import Group, flag


class MonitorOptions(Group):
    """How the monitor's probes are learnt."""

    batch_size: PositiveInt = Field(16, **flag("conversations per forward pass while learning the probes"))
    seed: int = Field(0, **flag("seed of the probes' fits"))


class ScoreOptions(Group):
    """How much one forward pass and one conversation may hold while scoring."""

    batch_size: PositiveInt = Field(32, **flag("conversations per forward pass"))
    max_tokens: PositiveInt | None = Field(
        None,
        **flag(
            "token budget per conversation: a longer one is scored on its last MAX_TOKENS tokens (the reply being "
            "judged), warned about and marked in its line (default: the monitor's context)"
        ),
    )
    batch_tokens: PositiveInt = Field(
        16384, **flag("padded tokens per forward pass: bounds memory whatever the conversations' lengths")
    )
