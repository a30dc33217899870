"""What a bundle does to each of its behaviours, against that behaviour's recipe alone: the cross-talk report.

Built by finsurg.analysis.crosstalk, stored in each variant of a bundle as `crosstalk.json`, and rendered on
its card. Every figure is measured on held-out items: each behaviour's held-out pairs and questions, and the
conversations that are off every behaviour's topic and unseen by every condition.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# what a bundle must keep of each behaviour, and leave alone elsewhere
SHIFT_KEPT = 0.9
ANSWERS_SAME = 0.9
OFF_TOPIC_UNCHANGED = 0.95


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BehaviourInBundle(_Row):
    """One behaviour, on its own held-out split, in the bundle against its recipe alone at the same alpha."""

    behaviour: str
    alpha: float
    pairs: int
    shift_alone: float  # mean log-odds shift (positive minus negative answer) over the held-out pairs
    shift_in_bundle: float
    shift_kept: float  # in the bundle / alone
    judged: str  # what the side's rule matches: the pack's positive or negative label
    judged_base: float | None = None  # share of greedy answers that match it, where the pack has rules
    judged_alone: float | None = None
    judged_in_bundle: float | None = None
    questions: int
    answers_same: float  # share of greedy answers whose first 24 tokens are the recipe-alone answers'


class BundleSide(_Row):
    variant: str
    behaviours: list[BehaviourInBundle]
    off_topic_unchanged: float  # share of off-topic greedy answers whose first 24 tokens stay the base's
    off_topic_questions: int


class CrossTalkReport(_Row):
    format: Literal["finsurg.crosstalk/1"] = "finsurg.crosstalk/1"
    sides: list[BundleSide]
    # gate of behaviour A -> held-out tokens of B's topic conversations (or "off-topic") -> share where it opens
    gates: dict[str, dict[str, float]]
    targets: dict[str, float] = {
        "shift_kept": SHIFT_KEPT,
        "answers_same": ANSWERS_SAME,
        "off_topic_unchanged": OFF_TOPIC_UNCHANGED,
    }

    def misses(self) -> list[str]:
        """Each figure that misses its target, in words."""
        found = []
        for side in self.sides:
            for row in side.behaviours:
                if row.shift_kept < SHIFT_KEPT:
                    found.append(f"{side.variant}: {row.behaviour} keeps {row.shift_kept:.0%} of its shift")
                if row.answers_same < ANSWERS_SAME:
                    found.append(f"{side.variant}: {row.behaviour}'s answers are its own on {row.answers_same:.0%}")
            if side.off_topic_unchanged < OFF_TOPIC_UNCHANGED:
                found.append(f"{side.variant}: off-topic answers unchanged on {side.off_topic_unchanged:.0%}")
        return found

    def tables(self) -> str:
        """Markdown: each behaviour in each variant against its recipe alone, then where each gate opens."""

        def share(value: float | None) -> str:
            return "—" if value is None else f"{value:.0%}"

        rows = [
            "| variant | behaviour | alpha | shift alone | shift in bundle (kept) | judged: base / alone / bundle "
            "| answers as alone | off-topic unchanged |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for side in self.sides:
            for row in side.behaviours:
                rows.append(
                    f"| {side.variant} | {row.behaviour} | {row.alpha:+g} | {row.shift_alone:+.2f} | "
                    f"{row.shift_in_bundle:+.2f} ({row.shift_kept:.0%}) | {row.judged}: {share(row.judged_base)} / "
                    f"{share(row.judged_alone)} / {share(row.judged_in_bundle)} | {share(row.answers_same)} "
                    f"of {row.questions} | {share(side.off_topic_unchanged)} of {side.off_topic_questions} |"
                )
        if self.gates:
            columns = list(next(iter(self.gates.values())))
            rows += [
                "",
                "| gate of ↓ opens on held-out tokens of → | " + " | ".join(columns) + " |",
                "|---|" + "---|" * len(columns),
            ]
            rows += [
                f"| {gate} | " + " | ".join(share(opens[c]) for c in columns) + " |"
                for gate, opens in self.gates.items()
            ]
        return "\n".join(rows)
