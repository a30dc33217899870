"""Prove a baked variant equals the hook version: reload with plain transformers and compare.

The exact check computes in float32 (weights rounded to the variant's dtype first): KL below 1e-6
and identical greedy tokens, or it fails. In the export dtype the figures are reported next to
that dtype's own noise floor (the same base weights computed in float32 vs in the export dtype),
because bf16 differs from itself by about as much.
"""

from __future__ import annotations

import gc
import json
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from finsurg.analysis.bridge import boot_bridge, greedy, logits, offset_hooks
from finsurg.errors import FinsurgError
from finsurg.jsonfile import read_json
from finsurg.exporter.bake import OFFSETS_NAME, SURGERY_NAME
from finsurg.exporter.seal import seal
from finsurg.hashing import check_sums, sha256_file
from finsurg.loading import DTYPES, encode, hf_greedy, load_model, load_tokenizer

VERIFICATION_NAME = "verification.json"
VERIFICATION_FORMAT = "finsurg.verification/1"
KL_LIMIT = 1e-6
NEW_TOKENS = 32


def verification_prompts() -> list[str]:
    return json.loads((resources.files("finsurg") / "data" / "prompts" / "verification.json").read_text())


def kl_per_position(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) for each row, in float64."""
    p_log = torch.log_softmax(p_logits.double(), dim=-1)
    q_log = torch.log_softmax(q_logits.double(), dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).clamp_min(0.0)


def compare_logits(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> dict:
    ref, cand = torch.cat(reference), torch.cat(candidate)
    kl = kl_per_position(ref, cand)
    return {
        "max_abs_logit_diff": float((ref - cand).abs().max()),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "argmax_agreement": float((ref.argmax(-1) == cand.argmax(-1)).double().mean()),
    }


class VariantRecord:
    """What a variant directory says about itself: surgery record and baked offsets."""

    def __init__(self, directory: Path):
        self.directory = directory
        if not directory.is_dir():
            raise FinsurgError(f"variant directory not found: {directory}")
        self.surgery = read_json(directory / SURGERY_NAME,
                                 f"{directory} has no {SURGERY_NAME}; it is not a finsurg variant")
        raw = load_file(directory / OFFSETS_NAME)
        self.offsets = {int(name.split(".")[1]): value for name, value in raw.items()}
        self.dtype = self.surgery["dtype"]

    @property
    def first_layer(self) -> int:
        return min(self.offsets)

    def base_path(self, override: Path | None) -> Path:
        path = override or Path(self.surgery["base_model"]["path"])
        if not path.is_dir():
            raise FinsurgError(f"base model directory not found: {path}; pass --model with the base")
        return path

    def check_base_hashes(self, base: Path) -> None:
        for name, digest in self.surgery["base_model"]["files"].items():
            if not (base / name).is_file() or sha256_file(base / name) != digest:
                raise FinsurgError(f"{base} is not the base this variant was made from ({name} differs)")


def open_variant(directory: Path, base_override: Path | None, base_trusted: bool):
    """A variant's record and checked SHA256SUMS, its base (hash-checked unless trusted), tokenizer and prompts."""
    record = VariantRecord(directory)
    sums = check_sums(directory)
    base = record.base_path(base_override)
    if not base_trusted:
        record.check_base_hashes(base)
    tokenizer = load_tokenizer(directory)
    prompts = [encode(tokenizer, text) for text in verification_prompts()]
    return record, sums, base, tokenizer, prompts


def _hidden(model, ids: torch.Tensor, upto: int) -> list[torch.Tensor]:
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states
    return [state.clone() for state in states[: upto + 1]]


def _reference_run(base: Path, tokenizer, prompts, offsets, weights, dtype, new_tokens, first, bar) -> dict:
    """Base model: plain logits and hidden states, then hooked logits and greedy tokens."""
    model = load_model(base, weights, dtype)
    run = {"plain": [], "hooked": [], "hidden": [], "greedy": []}
    for ids in prompts:
        run["hidden"].append(_hidden(model, ids, first))
        with torch.no_grad():
            run["plain"].append(model(ids).logits[0].float())
    bridge = boot_bridge(base, model, tokenizer, dtype)
    hooks = offset_hooks(offsets)
    for ids in prompts:
        run["hooked"].append(logits(bridge, ids, hooks))
        if new_tokens:
            run["greedy"].append(greedy(bridge, ids, new_tokens, hooks))
        bar.update(1)
    del bridge, model
    gc.collect()
    return run


def _variant_run(directory: Path, prompts, weights, dtype, new_tokens, first, bar) -> dict:
    model = load_model(directory, weights, dtype)
    run = {"logits": [], "hidden": [], "greedy": []}
    for ids in prompts:
        run["hidden"].append(_hidden(model, ids, first))
        with torch.no_grad():
            run["logits"].append(model(ids).logits[0].float())
        if new_tokens:
            run["greedy"].append(hf_greedy(model, ids, new_tokens))
        bar.update(1)
    del model
    gc.collect()
    return run


def _steering_effect(base_plain, hooked, baked) -> dict:
    """Baked must move away from the base the way the hooks do; dropped biases give cosine ~0."""
    hook_delta = torch.cat([h - p for h, p in zip(hooked, base_plain)]).flatten().double()
    baked_delta = torch.cat([b - p for b, p in zip(baked, base_plain)]).flatten().double()
    norm = hook_delta.norm() * baked_delta.norm()
    cosine = float(hook_delta @ baked_delta / norm) if norm > 0 else 0.0
    return {
        "kl_base_vs_hooked_mean": float(kl_per_position(torch.cat(base_plain), torch.cat(hooked)).mean()),
        "delta_cosine": cosine,
        "live": cosine > 0.99,
    }


def verify_variant(
    directory: Path,
    base_override: Path | None = None,
    new_tokens: int = NEW_TOKENS,
    base_trusted: bool = False,
    progress: bool = True,
) -> dict:
    """Run every check on a variant directory, write verification.json, and re-seal SHA256SUMS."""
    record, sums, base, tokenizer, prompts = open_variant(directory, base_override, base_trusted)
    first = record.first_layer
    steps = 2 * len(prompts) * (1 if record.dtype == "float32" else 2)
    weights, f32 = DTYPES[record.dtype], torch.float32
    with tqdm(total=steps, desc=f"verify {directory.name}", disable=not progress or None) as bar:
        ref = _reference_run(base, tokenizer, prompts, record.offsets, weights, f32, new_tokens, first, bar)
        var = _variant_run(directory, prompts, weights, f32, new_tokens, first, bar)
        exact = compare_logits(ref["hooked"], var["logits"])
        exact["greedy_identical"] = ref["greedy"] == var["greedy"]
        exact["greedy_prompts_identical"] = sum(a == b for a, b in zip(ref["greedy"], var["greedy"]))
        exact["prefix_layers_bit_identical"] = all(
            torch.equal(a, b)
            for base_states, var_states in zip(ref["hidden"], var["hidden"])
            for a, b in zip(base_states, var_states)
        )
        exact["prefix_layers_checked"] = first
        exact["steering_effect"] = _steering_effect(ref["plain"], ref["hooked"], var["logits"])
        exact["passed"] = bool(
            exact["kl_max"] < KL_LIMIT
            and exact["greedy_identical"]
            and exact["prefix_layers_bit_identical"]
            and exact["steering_effect"]["live"]
        )
        in_dtype = None
        if record.dtype != "float32":
            low_ref = _reference_run(base, tokenizer, prompts, record.offsets, weights, weights, 0, first, bar)
            low_var = _variant_run(directory, prompts, weights, weights, 0, first, bar)
            in_dtype = compare_logits(low_ref["hooked"], low_var["logits"])
            in_dtype["dtype"] = record.dtype
            in_dtype["noise_floor"] = compare_logits(ref["plain"], low_ref["plain"])
            in_dtype["within_noise_floor"] = in_dtype["kl_mean"] <= max(in_dtype["noise_floor"]["kl_mean"], 1e-6)
    report = {
        "format": VERIFICATION_FORMAT,
        "variant": record.surgery["variant"],
        "alpha": record.surgery["alpha"],
        "dtype": record.dtype,
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "kl_limit": KL_LIMIT,
        "float32": exact,
        "export_dtype": in_dtype,
        "checksums_ok": True,
        "passed": exact["passed"],
    }
    (directory / VERIFICATION_NAME).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    sums.pop(VERIFICATION_NAME, None)
    seal(directory, known=sums)
    return report
