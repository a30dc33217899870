"""The reports the checks write into a variant: verification against the hooks (structure, blocks, end to end),
vLLM and llama.cpp serving."""

from __future__ import annotations

from typing import Literal

from finsurg.variant.record import Record


class LogitComparison(Record):
    max_abs_logit_diff: float
    kl_mean: float
    kl_max: float
    argmax_agreement: float


class SteeringEffect(Record):
    kl_base_vs_hooked_mean: float
    delta_cosine: float
    live: bool


class ExactCheck(LogitComparison):
    """The whole model, baked against hooked. Streamed, greedy generation is replaced by teacher-forced argmax."""

    mode: Literal["in_memory", "streamed"] = "in_memory"
    greedy_identical: bool | None
    greedy_prompts_identical: int | None
    prefix_layers_bit_identical: bool
    prefix_layers_max_abs_diff: float = 0.0
    prefix_layers_within_noise: bool = True  # bit-identical, or (a graft's wider MLPs) within float32 rounding
    prefix_layers_checked: int
    steering_effect: SteeringEffect
    passed: bool


class DtypeCheck(LogitComparison):
    dtype: str
    noise_floor: LogitComparison
    within_noise_floor: bool


class StructureCheck(Record):
    tensors: int
    identical_shards: int  # shards whose SHA256 equals a base shard's
    tensors_compared: int  # tensors of the other shards, compared byte for byte
    biases: int  # bias tensors a fresh bake of the recorded offsets writes
    problems: list[str]
    passed: bool


class BlockCheck(Record):
    layer: int
    steered: bool
    max_abs_error: float | None = None  # variant block against base block + offset at the site
    tolerance: float | None = None
    offset_effect: float | None = None  # the offset's largest entry: what a lost bias would miss
    problem: str | None = None
    passed: bool


class LocalProof(Record):
    structure: StructureCheck
    blocks: list[BlockCheck]
    input_rms: list[float]
    input_tokens: int
    relative_tolerance: float
    passed: bool

    def rows(self) -> list[tuple[str, str]]:
        structure, blocks = self.structure, self.blocks
        steered = [b for b in blocks if b.steered]
        worst = max((b.max_abs_error or 0.0) for b in blocks) if blocks else 0.0
        return [
            (
                "structure: tensors byte-identical to the base, biases bit-equal to the offsets, config",
                "passed"
                if structure.passed
                else "; ".join(structure.problems[:3])
                + f" ({structure.identical_shards} shards by SHA256, {structure.tensors_compared} tensors compared)",
            ),
            (
                f"blocks {', '.join(str(b.layer) for b in blocks)} alone: variant = base + offset (float32)",
                f"{sum(b.passed for b in blocks)}/{len(blocks)} ({len(steered)} steered), max error "
                f"{worst:.2e}" + "".join(f"; layer {b.layer}: {b.problem}" for b in blocks if b.problem),
            ),
        ]


class VerificationReport(Record):
    format: Literal["finsurg.verification/2"] = "finsurg.verification/2"
    variant: str
    alpha: float
    dtype: str
    prompts: int
    new_tokens: int
    kl_limit: float
    proof: LocalProof
    checks: list[str]  # what ran: proof, end_to_end (in_memory or streamed), export_dtype
    end_to_end_note: str = ""  # why the end-to-end check did not run, or how it ran
    float32: ExactCheck | None
    export_dtype: DtypeCheck | None
    checksums_ok: bool
    passed: bool

    def rows(self) -> list[tuple[str, str]]:
        """The verification figures as (check, result) rows: the card's table and the CLI's summary."""
        rows = self.proof.rows()
        if self.float32 is None:
            return rows + [("end-to-end check", self.end_to_end_note)]
        rows += self._end_to_end(self.float32)
        low = self.export_dtype
        if low:
            rows.append(
                (
                    f"{low.dtype}: KL mean / max vs its noise floor (fp32 vs {low.dtype} base)",
                    f"{low.kl_mean:.2e} / {low.kl_max:.2e} vs {low.noise_floor.kl_mean:.2e}, argmax "
                    f"{low.argmax_agreement:.1%} vs {low.noise_floor.argmax_agreement:.1%}",
                )
            )
        return rows

    def _end_to_end(self, exact: ExactCheck) -> list[tuple[str, str]]:
        mode = "in memory" if exact.mode == "in_memory" else "layer-streamed"
        rows = [
            (f"end to end ({mode}): max abs logit difference", f"{exact.max_abs_logit_diff:.2e}"),
            ("KL mean / max", f"{exact.kl_mean:.2e} / {exact.kl_max:.2e} (limit {self.kl_limit:.0e})"),
            (
                "argmax agreement" + (" (teacher-forced)" if exact.greedy_identical is None else ""),
                f"{exact.argmax_agreement:.1%}",
            ),
        ]
        if exact.greedy_prompts_identical is not None:
            rows.append(
                (
                    f"{self.new_tokens}-token greedy generations identical",
                    f"{exact.greedy_prompts_identical}/{self.prompts}",
                )
            )
        effect = exact.steering_effect
        return rows + [
            (
                f"hidden states before layer {exact.prefix_layers_checked} equal to the base's",
                "bit-identical"
                if exact.prefix_layers_bit_identical
                else f"within float32 rounding (max |Δ| {exact.prefix_layers_max_abs_diff:.1e})"
                if exact.prefix_layers_within_noise
                else f"NO (max |Δ| {exact.prefix_layers_max_abs_diff:.1e})",
            ),
            (
                "moves like the hooks (cosine of logit change)",
                f"{effect.delta_cosine:.4f} (KL base→hooked {effect.kl_base_vs_hooked_mean:.3f})",
            ),
        ]

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"verification ({verdict}), float32, {self.prompts} prompts:"]
        return "\n".join(lines + [f"  {name}: {value}" for name, value in self.rows()])


class Agreement(Record):
    identical: bool
    prompts_identical: int
    tokens_matching: int
    tokens_total: int
    first_divergence: list[int | None]

    @classmethod
    def between(cls, produced: list[list[int]], reference: list[list[int]]) -> Agreement:
        """Identical prompts, matching tokens, and the first position where each prompt diverges."""
        first = [next((i for i, (a, b) in enumerate(zip(p, r)) if a != b), None) for p, r in zip(produced, reference)]
        return cls(
            identical=produced == reference,
            prompts_identical=sum(p == r for p, r in zip(produced, reference)),
            tokens_matching=sum(a == b for p, r in zip(produced, reference) for a, b in zip(p, r)),
            tokens_total=sum(len(r) for r in reference),
            first_divergence=first,
        )


class VllmReport(Record):
    format: Literal["finsurg.verification_vllm/1"] = "finsurg.verification_vllm/1"
    variant: str
    engine: str
    vllm_version: str
    compute_dtype: str
    prompts: int
    new_tokens: int
    vs_transformers: Agreement
    vs_hooks: Agreement
    vllm_load_seconds: float
    vllm_total_seconds: float
    passed: bool

    def summary(self) -> str:
        parts = [
            f"{name.replace('_', ' ')}: {item.prompts_identical}/{self.prompts} prompts identical, "
            f"{item.tokens_matching}/{item.tokens_total} tokens"
            for name, item in (("vs_transformers", self.vs_transformers), ("vs_hooks", self.vs_hooks))
        ]
        verdict = "PASSED" if self.passed else "FAILED"
        return (
            f"vLLM {self.vllm_version} ({verdict}), float32 greedy, {self.new_tokens} tokens: "
            + "; ".join(parts)
            + f"; engine loaded in {self.vllm_load_seconds} s"
        )


class LlamaCppReport(Record):
    """The variant in llama.cpp (F32): baked GGUF against the base GGUF plus the control vector, and against
    transformers beside the conversion's noise floor. A conditional variant has no control-vector form: its
    GGUF is the grafted checkpoint converted by llama.cpp, judged against transformers alone."""

    format: Literal["finsurg.verification_llamacpp/1"] = "finsurg.verification_llamacpp/1"
    variant: str
    llama_cpp_version: str
    alpha: float
    base_gguf: str
    prompts: int
    new_tokens: int
    baked_vs_control_vector: LogitComparison | None
    baked_vs_control_vector_tokens: Agreement | None
    tolerance: float  # on max |Δlogit| between the two llama.cpp routes, or (conditional) from transformers
    baked_vs_transformers: LogitComparison
    baked_vs_transformers_tokens: Agreement
    noise_floor: LogitComparison  # the base GGUF in llama.cpp against the base in transformers
    passed: bool

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        routes, tokens = self.baked_vs_control_vector, self.baked_vs_control_vector_tokens
        to_hf, floor = self.baked_vs_transformers, self.noise_floor
        control = (
            "  conditional: llama.cpp's control vectors cannot express its gate, so only transformers judges it "
            f"(tolerance {self.tolerance:.1e})\n"
            if routes is None
            else f"  baked GGUF vs base GGUF + control vector at {self.alpha:+g}: {tokens.prompts_identical}/"
            f"{self.prompts} greedy continuations identical ({self.new_tokens} tokens), max |Δlogit| "
            f"{routes.max_abs_logit_diff:.2e} (tolerance {self.tolerance:.1e})\n"
        )
        return (
            f"llama.cpp {self.llama_cpp_version} ({verdict}), F32, {self.prompts} prompts:\n"
            + control
            + f"  baked GGUF vs transformers on the variant: max |Δlogit| {to_hf.max_abs_logit_diff:.2e}, argmax "
            f"{to_hf.argmax_agreement:.1%}, greedy {self.baked_vs_transformers_tokens.prompts_identical}/"
            f"{self.prompts}; noise floor (base GGUF vs base in transformers): max |Δlogit| "
            f"{floor.max_abs_logit_diff:.2e}, argmax {floor.argmax_agreement:.1%}"
        )


class ChecksumReport(Record):
    """`verify --checksums`: every file of the variant re-hashed against SHA256SUMS."""

    variant: str
    files: int
    passed: bool = True

    def summary(self) -> str:
        return f"{self.files} files match SHA256SUMS"
