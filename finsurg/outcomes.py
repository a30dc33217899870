"""What each command returns through the API: a typed outcome that renders itself as JSON and as text.

The CLI prints `payload()` with --json and `text()` otherwise, `problems()` on stderr, and exits with
`status()`: one path for every command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:  # export imports torch; the CLI's outcomes do not
    from finsurg.export import ExportedVariant


TOPIC_SOURCES = {
    "condition": "topic probe from the recipe's topic condition",
    "fitted": "topic probe learnt",
    "none": "no topic label (the pack has no off-topic conversations of its own)",
}


class Outcome:
    def payload(self) -> dict:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    def problems(self) -> list[str]:
        """Lines for stderr that make the command fail."""
        return []

    def status(self) -> int:
        return 1 if self.problems() else 0


@dataclass
class AnalyzeOutcome(Outcome):
    analysis: object  # finsurg.analysis.analyze.Analysis

    def payload(self) -> dict:
        results, findings = self.analysis.results, self.analysis.findings
        behaviour = None if findings is None else findings.model_dump(mode="json")
        kept = {k: v for k, v in results.items() if k not in ("features", "heads")}
        return kept | {"behaviour": behaviour, "out": str(self.analysis.out)}

    def text(self) -> str:
        from finsurg.steer.finding_tables import answers_table, dial_table, heldout_table, routes_table

        results, recipe = self.analysis.results, self.analysis.recipe
        massive = list(results["massive_dims"]) or "none"
        lines = [f"Analysed {results['model']}: steered layers {recipe.layers}, massive dims {massive}"]
        lines += [f"  dim {n.index:>5}  {n.coefficient:+.4g}  {n.role}" for n in recipe.spec.neurons]
        for row in results["sweep"].get("rows", []) if results["sweep"] else []:
            lines.append(
                f"  alpha {row['alpha']:+4g}: preference {row['preference']:.3f}, log-odds {row['log_odds']:+.3f}, "
                f"perplexity {row['perplexity']:.3f} ({row['perplexity_change']:+.1%})"
            )
        findings = self.analysis.findings
        if findings is not None:
            routes, chosen = findings.routes, findings.tuning.chosen
            if routes is not None:
                lines.append(
                    f"What users see: the base's and both routes' answers to held-out on-topic and off-topic "
                    f"questions, judged (this recipe: {routes.chosen}, {routes.reason}):"
                )
                lines += ["  " + line for line in answers_table(routes.heldout)]
                if routes.heldout.dial:
                    lines.append("The dial, judged greedy answers at each alpha:")
                    lines += ["  " + line for line in dial_table(routes.heldout)]
            if routes is None:
                lines.append(f"Route: unconditional ({findings.route_reason})")
            lines.append(
                f"Tuned on the tune split: trial {chosen.trial}, {chosen.method}, layers "
                f"{chosen.layers[0]}-{chosen.layers[1]}, strength {chosen.strength:g} = alpha "
                f"{recipe.spec.default_alpha:g} (KL {chosen.kl:.3f} within {findings.tuning.budget:g})"
            )
            if routes is not None:
                lines.append("Both routes' log-odds shift and costs, held-out:")
                lines += ["  " + line for line in routes_table(routes.heldout)]
            lines.append(f"Held-out effects of the recipe ({findings.splits.heldout} questions):")
            lines += ["  " + line for line in heldout_table(findings.heldout)]
            lines.append("  " + findings.neuron_ablation.reason)
        lines.append(f"Wrote {self.analysis.out}/recipe.json, mech_interp_results.json, report.md and plots/")
        return "\n".join(lines + [results["disclaimer"]])


@dataclass
class SurgeryOutcome(Outcome):
    results: dict
    path: Path

    def payload(self) -> dict:
        return self.results

    def text(self) -> str:
        from finsurg.analysis.surgery import format_results

        return format_results(self.results) + f"\n\nWrote {self.path}"


@dataclass
class EvalOutcome(Outcome):
    report: BaseModel  # finsurg.variant.record.EvalReport
    out: Path | None

    def payload(self) -> dict:
        return self.report.model_dump(mode="json")

    def text(self) -> str:
        return eval_summary(self.report, self.out) + "\n" + self.report.disclaimer

    def problems(self) -> list[str]:
        return parity_problems(self.report)


@dataclass
class MonitorOutcome(Outcome):
    spec: BaseModel  # finsurg.monitor.classifier.MonitorSpec
    out: Path

    def payload(self) -> dict:
        return self.spec.model_dump(mode="json") | {"out": str(self.out)}

    def summary(self) -> str:
        spec = self.spec
        lines = [
            f"Monitor {self.out}: {spec.base['name']} cut after layer {spec.layer} ({spec.depth} of "
            f"{spec.base['num_hidden_layers']} layers, {spec.cost:.2f} of a full forward pass); "
            + TOPIC_SOURCES[spec.topic_source]
        ]
        for label in spec.labels:
            row = spec.heldout[label]
            lines.append(
                f"  {label:<18} held-out AUROC {row.auroc:.3f}  TPR {row.tpr:.2f}  FPR {row.fpr:.2f} "
                f"at logit {spec.thresholds[label]:+.2f}"
            )
        lines.append(f"  checked against the hooked base: max |Δlogit| {spec.check['max_abs_diff']:.1e}")
        return "\n".join(lines)

    def text(self) -> str:
        return self.summary() + "\n" + self.spec.disclaimer


@dataclass
class ScoreOutcome(Outcome):
    summary: object  # finsurg.monitor.score.Summary

    def payload(self) -> dict:
        from dataclasses import asdict

        return asdict(self.summary) | {"per_second": self.summary.per_second}

    def text(self) -> str:
        s = self.summary
        flagged = ", ".join(f"{label} {count} ({count / s.scored:.1%})" for label, count in s.flagged.items())
        means = ", ".join(f"{label} {value:.3f}" for label, value in s.mean_score.items())
        return (
            f"Scored {s.scored} of {s.lines} lines of {s.log} with {s.engine} in {s.seconds:.1f} s "
            f"({s.per_second:.1f} conversations/s, peak RSS {s.peak_rss_mb:.0f} MB): {s.out}\n"
            f"  flagged: {flagged}\n  mean score: {means}"
            + (f"\n  skipped {len(s.skipped)} unreadable lines (warned above)" if s.skipped else "")
        )


@dataclass
class DriftOutcome(Outcome):
    report: BaseModel  # finsurg.monitor.drift.DriftReport
    out: Path

    def payload(self) -> dict:
        return self.report.model_dump(mode="json") | {"out": str(self.out)}

    def text(self) -> str:
        report = self.report
        lines = [
            f"Drift of {report.scored}: {len(report.windows) - 1} windows of {report.window} against "
            f"lines {report.reference.lines[0]}-{report.reference.lines[1]} (|z| limit "
            f"{report.z_limit:.2f}): {len(report.alarms)} alarms"
        ]
        lines += [
            f"  ALARM {a.label} from line {a.first_line} (window {a.window}, z {a.z:+.2f})" for a in report.alarms
        ]
        return "\n".join(lines + [f"Report: {self.out / 'drift.md'}"])


@dataclass
class ExportOutcome(Outcome):
    model: str
    recipe: str
    alpha: float
    variants: list[ExportedVariant]
    disclaimer: str  # the pack's (a bundle's: each pack's)
    gguf: list[dict] = field(default_factory=list)
    eval: EvalOutcome | None = None
    uploads: list[dict] = field(default_factory=list)
    monitor: MonitorOutcome | None = None
    crosstalk: BaseModel | None = None  # finsurg.steer.bundle_report.CrossTalkReport, a bundle's

    def payload(self) -> dict:
        report = None if self.eval is None else self.eval.report.model_dump(mode="json")
        return {
            "model": self.model,
            "recipe": self.recipe,
            "alpha": self.alpha,
            "variants": [variant.payload() for variant in self.variants],
            "gguf": self.gguf,
            "eval": report,
            "monitor": None if self.monitor is None else self.monitor.payload(),
            "crosstalk": None if self.crosstalk is None else self.crosstalk.model_dump(mode="json"),
            "uploads": self.uploads,
        }

    def text(self) -> str:
        bundle = bool(self.variants and self.variants[0].alphas)
        strength = "as a bundle" if bundle else f"at alpha ±{abs(self.alpha):g}"
        lines = [f"Exported {self.model} with {self.recipe or 'recipe'} {strength}:"]
        for item in self.variants:
            modes = sorted(set(item.shards.values()))
            how = f", unchanged shards by {'/'.join(modes)}" if modes else ""
            alphas = ", ".join(f"{name} {a:+g}" for name, a in item.alphas.items()) or f"{item.alpha:+g}"
            lines.append(
                f"  {item.variant:<13} alpha {alphas}  {item.path}  ({item.bytes / 1e6:.0f} MB, {item.dtype}{how})"
            )
            if item.verification is not None:
                lines += ["    " + line for line in item.verification.summary().splitlines()]
        lines += [gguf_line(item) for item in self.gguf]
        if self.crosstalk is not None:
            lines += [
                "Cross-talk (held-out; each behaviour in the bundle against its recipe alone):",
                self.crosstalk.tables(),
            ]
        if self.eval is not None:
            lines.append(eval_summary(self.eval.report, self.eval.out))
        if self.monitor is not None:
            lines.append(self.monitor.summary())
        lines += [upload_summary(upload) for upload in self.uploads]
        return "\n".join(lines + [self.disclaimer])

    def problems(self) -> list[str]:
        return [] if self.eval is None else self.eval.problems()


@dataclass
class Written(Outcome):
    """An outcome that is one record of what was written (an upload, a GGUF file, a control vector)."""

    written: dict

    def payload(self) -> dict:
        return self.written


class UploadOutcome(Written):
    def text(self) -> str:
        return upload_summary(self.written)


@dataclass
class PackCheckOutcome(Outcome):
    check: BaseModel  # finsurg.packs.survey.PackCheck
    written: Path | None = None

    def payload(self) -> dict:
        return self.check.model_dump(mode="json") | {"written": None if self.written is None else str(self.written)}

    def text(self) -> str:
        return (f"Wrote {self.written}\n" if self.written else "") + self.check.text()

    def problems(self) -> list[str]:
        return self.check.problems


@dataclass
class VerifyOutcome(Outcome):
    """Any of the verification reports (checksums, transformers, vLLM, llama.cpp): each summarises itself."""

    report: BaseModel
    recorded_in: Path | None = None

    def payload(self) -> dict:
        return self.report.model_dump(mode="json")

    def text(self) -> str:
        recorded = f"\nRecorded in {self.recorded_in} (card and SHA256SUMS re-sealed)" if self.recorded_in else ""
        return self.report.summary() + recorded

    def status(self) -> int:
        return 0 if self.report.passed else 1


class GgufOutcome(Written):
    def text(self) -> str:
        return gguf_line(self.written)


class CvectorOutcome(Written):
    def text(self) -> str:
        written = self.written
        return (
            f"control vector of {written['recipe']} at alpha {written['alpha']:g}, layers "
            f"{', '.join(map(str, written['layers']))}: {written['path']}\n"
            f"llama.cpp: llama-cli -m BASE.gguf --control-vector-scaled {written['path']}:SCALE "
            f"(SCALE multiplies alpha {written['alpha']:g})"
        )


def parity_problems(report) -> list[str]:
    """A line for each variant whose baked and hooked lm-eval log-likelihoods disagree."""
    failed = [(name, item.parity) for name, item in report.variants.items() if item.parity and not item.parity.passed]
    return [
        f"{name}: baked and hooked lm-eval log-likelihoods disagree (max |Δ| {parity.worst:.3g} > {parity.atol:g}); "
        "the variant does not serve the surgery"
        for name, parity in failed
    ]


def eval_summary(report, out: Path | None) -> str:
    from finsurg.checks.evaluation import render_table

    where = f"\nWrote {out}/eval.json and eval.md" if out is not None else ""
    return "lm-eval results (float32 compute):\n" + render_table(report) + where


def upload_summary(upload: dict) -> str:
    size = sum(item["bytes"] for item in upload["files"])
    verb = "would upload" if upload["dry_run"] else "uploaded"
    lines = [
        f"{upload['directory']}: {verb} {len(upload['files'])} files ({size / 1e6:.1f} MB) to {upload['url']}"
        + (" (private)" if upload["private"] else "")
    ]
    if upload["dry_run"]:
        lines += [f"  {item['path']}  {item['bytes']} bytes" for item in upload["files"]]
    return "\n".join(lines)


def gguf_line(item: dict) -> str:
    if "variant" in item:
        return f"  {item['variant']} GGUF: {item['path']} ({item['bytes'] / 1e6:.0f} MB, sha256 {item['sha256'][:16]})"
    return (
        f"  control vector (alpha 1, layers {', '.join(map(str, item['layers']))}): {item['path']}; use "
        f"--control-vector-scaled {Path(item['path']).name}:ALPHA on the base GGUF"
    )
