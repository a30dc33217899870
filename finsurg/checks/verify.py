"""Prove a baked variant equals the hook version: reload with plain transformers and compare.

The exact check computes in float32 (weights rounded to the variant's dtype first): KL below 1e-6
and identical greedy tokens, or it fails. In the export dtype the figures are reported next to
that dtype's own noise floor (the same base weights computed in float32 vs in the export dtype),
because bf16 differs from itself by about as much. Verifying reads the variant and never writes it.
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch
import torch.nn.functional as F

from finsurg import progress
from finsurg.dtypes import weight_dtype
from finsurg.hashing import check_sums
from finsurg.loading import encode, hf_greedy, load_model, load_tokenizer
from finsurg.packs import Pack
from finsurg.steer.arch import by_name
from finsurg.steer.hooks import boot_bridge, greedy, logits, offset_hooks
from finsurg.variant.record import (
    DtypeCheck,
    ExactCheck,
    LogitComparison,
    SteeringEffect,
    Variant,
    VerificationReport,
)

KL_LIMIT = 1e-6
NEW_TOKENS = 32


def kl_per_position(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) for each row, in float64."""
    p_log = torch.log_softmax(p_logits.double(), dim=-1)
    q_log = torch.log_softmax(q_logits.double(), dim=-1)
    return F.kl_div(q_log, p_log, log_target=True, reduction="none").sum(-1).clamp_min(0.0)


def compare_logits(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> LogitComparison:
    ref, cand = torch.cat(reference), torch.cat(candidate)
    kl = kl_per_position(ref, cand)
    return LogitComparison(
        max_abs_logit_diff=float((ref - cand).abs().max()),
        kl_mean=float(kl.mean()),
        kl_max=float(kl.max()),
        argmax_agreement=float((ref.argmax(-1) == cand.argmax(-1)).double().mean()),
    )


class OpenedVariant:
    """A variant with checked SHA256SUMS, its base (hash-checked unless trusted), tokenizer and prompts."""

    def __init__(self, directory: Path, base_override: Path | None, base_trusted: bool):
        self.variant = Variant(directory)
        self.sums = check_sums(directory)
        self.base = self.variant.base_path(base_override)
        if not base_trusted:
            self.variant.check_base_hashes(self.base)
        self.arch = by_name(self.variant.surgery.base_model.architecture)
        self.tokenizer = load_tokenizer(directory)
        pack = Pack.load(self.variant.surgery.recipe.pack)
        self.prompts = [encode(self.tokenizer, text) for text in pack.verification_prompts()]

    def hooks(self):
        return offset_hooks(self.variant.offsets, self.arch)


def _hidden(model, ids: torch.Tensor, upto: int) -> list[torch.Tensor]:
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states
    return [state.clone() for state in states[: upto + 1]]


def _reference_run(opened: OpenedVariant, weights, dtype, new_tokens, bar) -> dict:
    """Base model: plain logits and hidden states, then hooked logits and greedy tokens."""
    model = load_model(opened.base, weights, dtype)
    first = opened.variant.first_layer
    run = {"plain": [], "hooked": [], "hidden": [], "greedy": []}
    for ids in opened.prompts:
        run["hidden"].append(_hidden(model, ids, first))
        with torch.no_grad():
            run["plain"].append(model(ids).logits[0].float())
    bridge = boot_bridge(opened.base, model, opened.tokenizer, dtype)
    hooks = opened.hooks()
    for ids in opened.prompts:
        run["hooked"].append(logits(bridge, ids, hooks))
        if new_tokens:
            run["greedy"].append(greedy(bridge, ids, new_tokens, hooks))
        bar.update(1)
    del bridge, model
    gc.collect()
    return run


def _variant_run(opened: OpenedVariant, weights, dtype, new_tokens, bar) -> dict:
    model = load_model(opened.variant.directory, weights, dtype)
    first = opened.variant.first_layer
    run = {"logits": [], "hidden": [], "greedy": []}
    for ids in opened.prompts:
        run["hidden"].append(_hidden(model, ids, first))
        with torch.no_grad():
            run["logits"].append(model(ids).logits[0].float())
        if new_tokens:
            run["greedy"].append(hf_greedy(model, ids, new_tokens))
        bar.update(1)
    del model
    gc.collect()
    return run


def _steering_effect(base_plain, hooked, baked) -> SteeringEffect:
    """Baked must move away from the base the way the hooks do; dropped biases give cosine ~0."""
    hook_delta = torch.cat([h - p for h, p in zip(hooked, base_plain)]).flatten().double()
    baked_delta = torch.cat([b - p for b, p in zip(baked, base_plain)]).flatten().double()
    norm = hook_delta.norm() * baked_delta.norm()
    cosine = float(hook_delta @ baked_delta / norm) if norm > 0 else 0.0
    return SteeringEffect(
        kl_base_vs_hooked_mean=float(kl_per_position(torch.cat(base_plain), torch.cat(hooked)).mean()),
        delta_cosine=cosine,
        live=cosine > 0.99,
    )


def verify_variant(
    directory: Path,
    base_override: Path | None = None,
    new_tokens: int = NEW_TOKENS,
    base_trusted: bool = False,
) -> VerificationReport:
    """Run every check on a variant directory and return the report; the directory is not touched."""
    opened = OpenedVariant(directory, base_override, base_trusted)
    variant = opened.variant
    prompts = len(opened.prompts)
    steps = 2 * prompts * (1 if variant.dtype == "float32" else 2)
    weights, f32 = weight_dtype(variant.dtype), torch.float32
    with progress.bar(total=steps, desc=f"verify {directory.name}") as bar:
        ref = _reference_run(opened, weights, f32, new_tokens, bar)
        var = _variant_run(opened, weights, f32, new_tokens, bar)
        comparison = compare_logits(ref["hooked"], var["logits"])
        effect = _steering_effect(ref["plain"], ref["hooked"], var["logits"])
        greedy_same = ref["greedy"] == var["greedy"]
        prefix_same = all(
            torch.equal(a, b)
            for base_states, var_states in zip(ref["hidden"], var["hidden"])
            for a, b in zip(base_states, var_states)
        )
        exact = ExactCheck(
            **comparison.model_dump(),
            greedy_identical=greedy_same,
            greedy_prompts_identical=sum(a == b for a, b in zip(ref["greedy"], var["greedy"])),
            prefix_layers_bit_identical=prefix_same,
            prefix_layers_checked=variant.first_layer,
            steering_effect=effect,
            passed=bool(comparison.kl_max < KL_LIMIT and greedy_same and prefix_same and effect.live),
        )
        in_dtype = None
        if variant.dtype != "float32":
            low_ref = _reference_run(opened, weights, weights, 0, bar)
            low_var = _variant_run(opened, weights, weights, 0, bar)
            low = compare_logits(low_ref["hooked"], low_var["logits"])
            floor = compare_logits(ref["plain"], low_ref["plain"])
            in_dtype = DtypeCheck(
                **low.model_dump(),
                dtype=variant.dtype,
                noise_floor=floor,
                within_noise_floor=low.kl_mean <= max(floor.kl_mean, 1e-6),
            )
    return VerificationReport(
        variant=variant.name,
        alpha=variant.surgery.alpha,
        dtype=variant.dtype,
        prompts=prompts,
        new_tokens=new_tokens,
        kl_limit=KL_LIMIT,
        float32=exact,
        export_dtype=in_dtype,
        checksums_ok=True,
        passed=exact.passed,
    )
