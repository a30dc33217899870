"""Prove a baked variant equals the hook version.

First the layer-local proof (finsurg.checks.local_proof): structure plus each steered block
alone, at any model size. Then, as evidence that the pieces compose, the end-to-end check: the
variant reloaded with plain transformers against TransformerLens hooks on the base, in float32
(weights rounded to the variant's dtype first): KL below 1e-6 and identical greedy tokens, or it
fails. It runs in memory when the model fits the memory budget, layer-streamed with `full` when it
does not, and is skipped otherwise. In the export dtype the figures are reported next to
that dtype's own noise floor (the same base weights computed in float32 vs in the export dtype),
because bf16 differs from itself by about as much. Verifying reads the variant and never writes it.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from finsurg import progress
from finsurg.checks.local_proof import Proven, prove
from finsurg.checks.streamed import streamed_runs
from finsurg.devices import GIB, budget, model_estimate
from finsurg.dtypes import weight_dtype
from finsurg.io.hashing import check_sums
from finsurg.models.bridge import boot_bridge, greedy, logits
from finsurg.models.loading import encode, hf_greedy, load_model, load_tokenizer
from finsurg.models.source import read_config
from finsurg.packs import Pack
from finsurg.steer.arch import by_name
from finsurg.steer.hooks import offset_hooks
from finsurg.variant.directory import Variant
from finsurg.variant.reports import DtypeCheck, ExactCheck, LogitComparison, SteeringEffect, VerificationReport

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

    def __init__(self, directory: Path, base_override: Path | None, base_trusted: bool, sums=None):
        self.variant = Variant(directory)
        self.sums = sums if sums is not None else check_sums(directory)
        self.base = self.variant.base_path(base_override)
        if not base_trusted:
            self.variant.check_base_hashes(self.base)
        self.arch = by_name(self.variant.record.base_model.architecture)
        self.tokenizer = load_tokenizer(directory)
        record = self.variant.record
        packs = [item.recipe.pack for item in record.bundle] or [record.recipe.pack]  # a bundle's: every topic's
        texts = [text for pack in packs for text in Pack.load(pack).verification_prompts()]
        self.prompts = [encode(self.tokenizer, text) for text in texts]

    def hooks(self):
        """The recorded surgery as TransformerLens hooks, its neurons rounded as the bake wrote them."""
        variant = self.variant
        return offset_hooks(variant.surgery, self.arch, read_config(self.base), variant.weight_dtype)


PREFIX_TOLERANCE = 1e-5  # of the largest hidden value: float32 rounding of a reordered sum


def _hidden(model, ids: torch.Tensor, upto: int) -> list[torch.Tensor]:
    with torch.no_grad():
        states = model(ids.to(model.device), output_hidden_states=True).hidden_states
    return [state.cpu() for state in states[: upto + 1]]


def _reference_run(opened: OpenedVariant, weights, dtype, new_tokens, bar, device) -> dict:
    """Base model: plain logits and hidden states, then hooked logits and greedy tokens."""
    model = load_model(opened.base, weights, dtype, device=device)
    first = opened.variant.first_layer
    run = {"plain": [], "hooked": [], "hidden": [], "greedy": []}
    for ids in opened.prompts:
        run["hidden"].append(_hidden(model, ids, first))
        with torch.no_grad():
            run["plain"].append(model(ids.to(model.device)).logits[0].float().cpu())
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


def _variant_run(opened: OpenedVariant, weights, dtype, new_tokens, bar, device) -> dict:
    model = load_model(opened.variant.directory, weights, dtype, device=device)
    first = opened.variant.first_layer
    run = {"logits": [], "hidden": [], "greedy": []}
    for ids in opened.prompts:
        run["hidden"].append(_hidden(model, ids, first))
        with torch.no_grad():
            run["logits"].append(model(ids.to(model.device)).logits[0].float().cpu())
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


def _end_to_end(opened: OpenedVariant, mode: str, new_tokens: int, device) -> tuple[ExactCheck, dict | None]:
    """The whole model, baked against hooked, in float32: in memory, or one block at a time."""
    variant, weights, f32 = opened.variant, weight_dtype(opened.variant.dtype), torch.float32
    first = variant.first_layer
    cap = variant.record.context_cap
    if cap:  # the rewrite is exact only within its capped context: generation stays inside it
        new_tokens = max(0, min(new_tokens, cap - max(ids.shape[1] for ids in opened.prompts)))
    if mode == "streamed":
        ref = streamed_runs(opened.base, opened.arch, weights, opened.prompts, variant.surgery, first)
        var = streamed_runs(variant.directory, opened.arch, weights, opened.prompts, None, first)
        var["logits"], new_tokens = var["plain"], 0
    else:
        with progress.bar(total=2 * len(opened.prompts), desc=f"verify {variant.directory.name}") as bar:
            ref = _reference_run(opened, weights, f32, new_tokens, bar, device)
            var = _variant_run(opened, weights, f32, new_tokens, bar, device)
    comparison = compare_logits(ref["hooked"], var["logits"])
    effect = _steering_effect(ref["plain"], ref["hooked"], var["logits"])
    greedy_same = ref["greedy"] == var["greedy"] if new_tokens else None
    pairs = [
        (a, b) for base_states, var_states in zip(ref["hidden"], var["hidden"]) for a, b in zip(base_states, var_states)
    ]
    prefix_same = all(torch.equal(a, b) for a, b in pairs)
    prefix_diff = max((float((a - b).abs().max()) for a, b in pairs), default=0.0)
    prefix_scale = max((float(a.abs().max()) for a, _ in pairs), default=0.0)
    # a graft widens every MLP by zero neurons: the same sums in another order, equal up to float32 rounding
    prefix_ok = prefix_same or (variant.surgery.gated and prefix_diff <= PREFIX_TOLERANCE * (1.0 + prefix_scale))
    exact = ExactCheck(
        **comparison.model_dump(),
        mode=mode,
        greedy_identical=greedy_same,
        greedy_prompts_identical=sum(a == b for a, b in zip(ref["greedy"], var["greedy"])) if new_tokens else None,
        prefix_layers_bit_identical=prefix_same,
        prefix_layers_max_abs_diff=prefix_diff,
        prefix_layers_within_noise=prefix_ok,
        prefix_layers_checked=first,
        steering_effect=effect,
        passed=bool(comparison.kl_max < KL_LIMIT and greedy_same is not False and prefix_ok and effect.live),
    )
    return exact, (ref if mode == "in_memory" else None)


def _in_dtype(opened: OpenedVariant, ref: dict, device) -> DtypeCheck:
    """The variant computed in its own dtype against the hooks in that dtype, beside that dtype's noise floor."""
    weights = weight_dtype(opened.variant.dtype)
    with progress.bar(total=2 * len(opened.prompts), desc=f"verify {opened.variant.dtype}") as bar:
        low_ref = _reference_run(opened, weights, weights, 0, bar, device)
        low_var = _variant_run(opened, weights, weights, 0, bar, device)
    low = compare_logits(low_ref["hooked"], low_var["logits"])
    floor = compare_logits(ref["plain"], low_ref["plain"])
    return DtypeCheck(
        **low.model_dump(),
        dtype=opened.variant.dtype,
        noise_floor=floor,
        within_noise_floor=low.kl_mean <= max(floor.kl_mean, 1e-6),
    )


def end_to_end_mode(config: dict, full: bool, device, max_memory: dict | None) -> tuple[str | None, str]:
    """in_memory when the model fits the budget; streamed when it does not and --full asks; else none.

    The note goes into sealed reports, so it names the model's need and never the machine's free memory:
    two exports of one recipe stay byte-identical.
    """
    estimate = model_estimate("the in-memory end-to-end check", config, torch.float32)
    need = f"the whole model in float32 needs about {estimate.need / GIB:.1f} GiB"
    if estimate.need <= budget(device, max_memory):
        return "in_memory", f"in memory: {need}, within the memory budget"
    if full:
        return "streamed", f"layer-streamed ({need}, over the memory budget); teacher-forced argmax replaces greedy"
    return None, f"skipped: {need}, over the memory budget; --full runs it layer-streamed"


@dataclass(frozen=True)
class Scope:
    """How far verification goes: greedy tokens compared end to end, whether that check runs layer-streamed where
    the model does not fit (`full`), and the memory and device it may use."""

    new_tokens: int = NEW_TOKENS
    full: bool = False
    max_memory: dict | None = None
    device: torch.device | None = None


def verify_variant(
    directory: Path,
    base_override: Path | None = None,
    scope: Scope = Scope(),
    base_trusted: bool = False,
    sums: dict[str, str] | None = None,
) -> VerificationReport:
    """The layer-local proof, then the end-to-end check where it fits (or with `full`); the directory is not touched.

    `sums` are SHA256SUMS already known to be right (an export that just wrote them); otherwise every
    file is re-hashed.
    """
    return verify_variants([directory], base_override, scope, base_trusted, None if sums is None else [sums])[0]


def verify_variants(
    directories: list[Path],
    base_override: Path | None = None,
    scope: Scope = Scope(),
    base_trusted: bool = False,
    sums: list[dict[str, str]] | None = None,
    proven: Proven | None = None,
) -> list[VerificationReport]:
    """verify_variant for variants of one base, whose proofs read each base block once; `proven` holds the
    proof's checks where they already ran (an export runs them while it writes)."""
    device = scope.device or torch.device("cpu")
    opened = [
        OpenedVariant(directory, base_override, base_trusted, None if sums is None else sums[k])
        for k, directory in enumerate(directories)
    ]
    first = opened[0]
    variants = [o.variant for o in opened]
    proofs = prove(variants, first.base, first.arch, [o.sums for o in opened], first.prompts, proven)
    mode, note = end_to_end_mode(read_config(first.base), scope.full, device, scope.max_memory)
    return [_report(one, proof, mode, note, scope.new_tokens, device) for one, proof in zip(opened, proofs)]


def _report(opened: OpenedVariant, proof, mode, note, new_tokens, device) -> VerificationReport:
    variant = opened.variant
    checks = ["checksums", "proof"]
    exact = in_dtype = None
    if mode is not None:
        exact, ref = _end_to_end(opened, mode, new_tokens, device)
        checks.append(f"end_to_end:{mode}")
        if ref is not None and variant.dtype != "float32":
            in_dtype = _in_dtype(opened, ref, device)
            checks.append("export_dtype")
    return VerificationReport(
        variant=variant.name,
        alpha=variant.record.alpha,
        dtype=variant.dtype,
        prompts=len(opened.prompts),
        new_tokens=new_tokens if mode == "in_memory" else 0,
        kl_limit=KL_LIMIT,
        proof=proof,
        checks=checks,
        end_to_end_note=note,
        float32=exact,
        export_dtype=in_dtype,
        checksums_ok=True,
        passed=proof.passed and (exact is None or exact.passed),
    )
