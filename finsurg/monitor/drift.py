"""`finsurg monitor drift`: windows of a scored log against a reference window.

Windows are consecutive runs of N scored lines, or spans of time (lines need "time"). The reference is the
first window, or the first `reference` lines or span. For each window and label: the share flagged, the mean
score with its 95% interval, and a two-proportion z statistic of the flagged share against the reference's.
A window alarms where |z| passes the limit: the two-sided normal quantile at `alarm_p`, Bonferroni-divided
over every window and label compared, so a log without a shift stays quiet at that family-wise rate.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

from pydantic import BaseModel, ConfigDict

from finsurg.errors import FinsurgError
from finsurg.io.atomic import building, refuse_existing

REPORT_NAME = "drift.md"
PLOT_NAME = "drift.png"
JSON_NAME = "drift.json"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Span:
    """A window size: a count of lines, or seconds of time."""

    lines: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str, flag: str) -> Span:
        text = str(text).strip()
        if text.isdigit() and int(text) > 0:
            return cls(lines=int(text))
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
        if match and float(match[1]) > 0:
            return cls(seconds=float(match[1]) * UNITS[match[2]])
        raise FinsurgError(f"{flag} {text!r}: expected a count of lines (500) or a span of time (30m, 6h, 1d)")

    def __str__(self) -> str:
        return f"{self.lines} lines" if self.lines else f"{self.seconds:g} s"


class _Figures(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelWindow(_Figures):
    """One label in one window."""

    flagged_share: float
    mean_score: float
    mean_score_ci95: tuple[float, float]
    z: float  # two-proportion z of the flagged share against the reference's (0 for the reference)
    alarm: bool


class WindowRow(_Figures):
    window: int
    first_line: int
    last_line: int
    n: int
    start: float | None = None  # seconds, for windows of time
    reference: bool
    labels: dict[str, LabelWindow]


class Alarm(_Figures):
    window: int
    first_line: int
    label: str
    z: float


class Reference(_Figures):
    lines: tuple[int, int]
    n: int


class DriftReport(_Figures):
    """drift.json: every window's figures per label, and the alarms."""

    scored: str
    window: str
    reference: Reference
    alarm_p: float
    z_limit: float
    labels: list[str]
    windows: list[WindowRow]
    alarms: list[Alarm]


@dataclass
class Window:
    index: int
    first_line: int
    last_line: int
    start: float | None
    n: int = 0
    flagged: dict[str, int] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)  # running mean score (Welford), so memory stays flat
    squares: dict[str, float] = field(default_factory=dict)  # summed squared deviations from it

    def add(self, line: dict, labels: list[str]) -> None:
        self.n += 1
        self.last_line = line["line"]
        for label in labels:
            self.flagged[label] = self.flagged.get(label, 0) + bool(line["flags"][label])
            score, mean = float(line["scores"][label]), self.means.get(label, 0.0)
            self.means[label] = mean + (score - mean) / self.n
            self.squares[label] = self.squares.get(label, 0.0) + (score - mean) * (score - self.means[label])

    def share(self, label: str) -> float:
        return self.flagged.get(label, 0) / self.n

    def mean(self, label: str) -> tuple[float, float]:
        """Mean score and the half-width of its 95% interval."""
        if self.n < 2:
            return self.means[label], float("nan")
        variance = self.squares[label] / (self.n - 1)
        return self.means[label], 1.959964 * math.sqrt(variance / self.n)


def read_scored(path: Path) -> Iterator[dict]:
    """The scored lines of `finsurg monitor score` output (error lines are passed over)."""
    if not path.is_file():
        raise FinsurgError(f"scored log not found: {path}")
    with open(path) as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                raise FinsurgError(
                    f"{path}:{number}: not JSON; drift reads what `finsurg monitor score` writes"
                ) from None
            if not isinstance(line, dict) or "error" in line:
                continue
            if not all(key in line for key in ("line", "scores", "flags")):
                raise FinsurgError(f"{path}:{number}: not a score line (no scores and flags)")
            yield line


def windows(lines: Iterator[dict], span: Span, labels: list[str] | None = None) -> list[Window]:
    found: list[Window] = []
    for line in lines:
        labels = labels or list(line["scores"])
        if span.seconds is not None and "time" not in line:
            raise FinsurgError(f"line {line['line']} has no time; use a window of lines (--window 500)")
        if not found or _full(found[-1], line, span):
            start = line.get("time")
            if span.seconds is not None and found:
                start = found[-1].start + span.seconds * math.floor((line["time"] - found[-1].start) / span.seconds)
            found.append(Window(len(found), line["line"], line["line"], start))
        found[-1].add(line, labels)
    return found


def _full(window: Window, line: dict, span: Span) -> bool:
    if span.lines is not None:
        return window.n >= span.lines
    return line["time"] >= window.start + span.seconds


def z_statistic(flagged: int, n: int, ref_flagged: int, ref_n: int) -> float:
    """Two-proportion z (pooled): the window's flagged share against the reference's."""
    pooled = (flagged + ref_flagged) / (n + ref_n)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / ref_n))
    difference = flagged / n - ref_flagged / ref_n
    if spread == 0:
        return 0.0 if difference == 0 else math.copysign(math.inf, difference)
    return difference / spread


def drift(scored: Path, window: Span, reference: Span | None = None, alarm_p: float = 0.01) -> DriftReport:
    """The windows' figures and alarms."""
    all_windows = windows(read_scored(scored), window)
    if not all_windows:
        raise FinsurgError(f"{scored}: no scored line")
    labels = list(all_windows[0].means)
    if reference is None or reference == window:
        ref, compared = all_windows[0], all_windows[1:]
    else:
        ref_windows = windows(read_scored(scored), reference, labels)
        ref = ref_windows[0]
        compared = [w for w in all_windows if w.first_line > ref.last_line]
    if not compared:
        raise FinsurgError(f"{scored}: the log holds only the reference window ({ref.n} lines); use a smaller --window")
    tests = len(compared) * len(labels)
    limit = NormalDist().inv_cdf(1 - alarm_p / (2 * tests))
    rows = []
    for item in [ref, *compared]:
        figures = {}
        for label in labels:
            mean, half = item.mean(label)
            z = 0.0 if item is ref else z_statistic(item.flagged[label], item.n, ref.flagged[label], ref.n)
            figures[label] = LabelWindow(
                flagged_share=item.share(label),
                mean_score=mean,
                mean_score_ci95=(mean - half, mean + half),
                z=z,
                alarm=item is not ref and abs(z) > limit,
            )
        rows.append(
            WindowRow(
                window=item.index,
                first_line=item.first_line,
                last_line=item.last_line,
                n=item.n,
                start=item.start,
                reference=item is ref,
                labels=figures,
            )
        )
    alarms = [
        Alarm(window=row.window, first_line=row.first_line, label=label, z=row.labels[label].z)
        for row in rows
        for label in labels
        if row.labels[label].alarm
    ]
    return DriftReport(
        scored=str(scored),
        window=str(window),
        reference=Reference(lines=(ref.first_line, ref.last_line), n=ref.n),
        alarm_p=alarm_p,
        z_limit=limit,
        labels=labels,
        windows=rows,
        alarms=alarms,
    )


def write_report(report: DriftReport, out: Path, overwrite: bool) -> Path:
    refuse_existing(out, overwrite)
    with building(out) as partial:
        (partial / JSON_NAME).write_text(report.model_dump_json(indent=2) + "\n")
        _plot(report, partial / PLOT_NAME)
        (partial / REPORT_NAME).write_text(markdown(report))
    return out


def markdown(report: DriftReport) -> str:
    labels = report.labels
    head = "| window | lines | n | " + " | ".join(f"{lb} flagged | {lb} mean score (95% CI) | {lb} z" for lb in labels)
    rule = "|---|---|---|" + "---|---|---|" * len(labels)
    rows = []
    for row in report.windows:
        cells = [
            f"{row.window}{' (reference)' if row.reference else ''}",
            f"{row.first_line}–{row.last_line}",
            str(row.n),
        ]
        for label in labels:
            item = row.labels[label]
            low, high = item.mean_score_ci95
            alarm = " **ALARM**" if item.alarm else ""
            cells += [
                f"{item.flagged_share:.1%}",
                f"{item.mean_score:.3f} ({low:.3f}–{high:.3f})",
                f"{item.z:+.2f}{alarm}",
            ]
        rows.append("| " + " | ".join(cells) + " |")
    alarms = report.alarms
    verdict = (
        "No alarm: no window's flagged share differs from the reference's beyond the limit."
        if not alarms
        else "Alarms: "
        + "; ".join(f"`{a.label}` from line {a.first_line} (window {a.window}, z {a.z:+.2f})" for a in alarms)
        + "."
    )
    return f"""# Monitor drift: `{report.scored}`

Windows of {report.window}; the reference is lines {report.reference.lines[0]}–{report.reference.lines[1]}
({report.reference.n} lines). A window alarms where the two-proportion z of its flagged share against the
reference's passes ±{report.z_limit:.2f} (p {report.alarm_p:g}, Bonferroni over {len(report.windows) - 1}
windows × {len(labels)} labels).

{verdict}

![flagged share per window]({PLOT_NAME})

{head}
{rule}
{chr(10).join(rows)}
"""


def _plot(report: DriftReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = report.labels
    figure, axes = plt.subplots(len(labels), 1, figsize=(8, 2.2 + 1.6 * len(labels)), sharex=True, squeeze=False)
    rows = report.windows
    x = [row.window for row in rows]
    for axis, label in zip(axes[:, 0], labels):  # a panel per label
        shares = [row.labels[label].flagged_share for row in rows]
        (line,) = axis.plot(x, shares, marker="o")
        alarmed = [(row.window, row.labels[label].flagged_share) for row in rows if row.labels[label].alarm]
        if alarmed:
            axis.scatter(*zip(*alarmed, strict=True), s=120, facecolors="none", edgecolors="red", zorder=3)
        axis.axhline(rows[0].labels[label].flagged_share, color=line.get_color(), linestyle=":", linewidth=1)
        axis.set_title(f"{label}: share flagged", fontsize=9, loc="left")
        axis.set_ylim(0, 1)
    axes[-1, 0].set_xlabel("window (red circle: alarm; dotted: reference share)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
