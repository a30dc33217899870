"""`finsurg verify --engine llama.cpp`: the variant inside llama.cpp itself, two routes, in F32.

The baked GGUF and the unmodified base GGUF with the control vector at the same alpha must agree
(identical greedy tokens, logits within a stated tolerance): both are llama.cpp, both F32, with an
F32 KV cache. Against transformers on the safetensors variant, the agreement is reported next to
the noise floor of the conversion: the base GGUF in llama.cpp against the base in transformers.
llama.cpp runs in its own environment (make llamacpp-setup), through finsurg/engines/scripts/llamacpp.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from finsurg import progress
from finsurg.bake.gguf_source import base_gguf
from finsurg.bake.gguf_variant import check_expressible, converted_variant
from finsurg.checks.verify import OpenedVariant, compare_logits
from finsurg.engines.converter import converter
from finsurg.engines.runner import engine_python, run_script
from finsurg.io.gguf_file import write_baked_gguf, write_control_vector
from finsurg.models.loading import hf_greedy, load_model
from finsurg.variant.reports import Agreement, LlamaCppReport

RELATIVE_TOLERANCE = 1e-4  # of the largest logit: F32 compute, the bias added inside ffn_down or after the block


def llamacpp_python(explicit: str | None = None) -> str:
    return engine_python(
        explicit,
        "llamacpp_python",
        ["llama_cpp", "gguf"],
        "llama.cpp",
        "run `make llamacpp-setup` and set FINSURG_LLAMACPP_PYTHON=.venv-llamacpp/bin/python, or pass --llamacpp-python",
    )


def run_llamacpp(python: str, model: Path, prompts, new_tokens: int, control=None) -> dict:
    """Greedy tokens and per-position logits of each prompt, from llama.cpp."""
    request = {
        "model": str(model),
        "control_vector": str(control[0]) if control else None,
        "scale": control[1] if control else 1.0,
        "prompts": [ids[0].tolist() for ids in prompts],
        "new_tokens": new_tokens,
    }
    with tempfile.TemporaryDirectory(prefix="finsurg-llamacpp-") as scratch:
        reply = run_script(python, "llamacpp.py", request, Path(scratch), f"llama.cpp on {model.name}")
        reply["logits"] = [torch.from_numpy(np.load(Path(scratch) / f"logits-{k}.npy")) for k in range(len(prompts))]
    return reply


def _transformers(path: Path, opened: OpenedVariant, new_tokens: int) -> dict:
    model = load_model(path, torch.float32)
    with torch.no_grad():
        logits = [model(ids).logits[0].float() for ids in opened.prompts]
    greedy = [hf_greedy(model, ids, new_tokens) for ids in opened.prompts] if new_tokens else []
    return {"logits": logits, "greedy": greedy}


def _llamacpp_runs(python: str, opened: OpenedVariant, source: Path, new_tokens: int, bar) -> tuple:
    """llama.cpp on the variant's GGUF, on the base with the control vector (none for a gated surgery, which a
    control vector cannot express), and on the plain base (the conversion's noise floor)."""
    variant = opened.variant
    surgery, alpha = variant.surgery, variant.record.alpha
    with tempfile.TemporaryDirectory(prefix="finsurg-gguf-") as scratch:
        scratch = Path(scratch)
        if surgery.gated:  # the grafted checkpoint itself, through llama.cpp's converter
            converted_variant(variant.directory, converter(python), "f32", scratch / "baked.gguf")
        else:
            write_baked_gguf(source, surgery.always(), scratch / "baked.gguf", "f32")
        write_baked_gguf(source, {}, scratch / "base.gguf", "f32")
        baked = run_llamacpp(python, scratch / "baked.gguf", opened.prompts, new_tokens)
        bar.update(1)
        steered = None
        if not surgery.gated:
            unit = {layer: offset / alpha for layer, offset in surgery.always().items()}
            write_control_vector(unit, opened.arch.family, scratch / "control.gguf")
            control = (scratch / "control.gguf", alpha)
            steered = run_llamacpp(python, scratch / "base.gguf", opened.prompts, new_tokens, control)
        bar.update(1)
        plain = run_llamacpp(python, scratch / "base.gguf", opened.prompts, 0)
        bar.update(1)
    return baked, steered, plain


def verify_with_llamacpp(
    directory: Path,
    base_override: Path | None = None,
    new_tokens: int = 32,
    python: str | None = None,
) -> LlamaCppReport:
    python = llamacpp_python(python)
    opened = OpenedVariant(directory, base_override, base_trusted=False)
    variant = opened.variant
    alpha = variant.record.alpha
    check_expressible(opened.arch)
    source = base_gguf(variant.record.base_model, opened.base, converter(python))
    with progress.bar(total=5, desc="llama.cpp") as bar:
        baked, steered, plain = _llamacpp_runs(python, opened, source, new_tokens, bar)
        hf_variant = _transformers(variant.directory, opened, new_tokens)
        bar.update(1)
        hf_base = _transformers(opened.base, opened, 0)
        bar.update(1)
    to_transformers = compare_logits(hf_variant["logits"], baked["logits"])
    floor = compare_logits(hf_base["logits"], plain["logits"])
    if steered is None:
        routes = tokens = None
        tolerance = 2 * floor.max_abs_logit_diff + 1e-3  # no further from transformers than the conversion's own noise
        passed = to_transformers.max_abs_logit_diff <= tolerance
    else:
        routes = compare_logits(baked["logits"], steered["logits"])
        tolerance = RELATIVE_TOLERANCE * max(float(torch.cat(baked["logits"]).abs().max()), 1.0)
        tokens = Agreement.between(baked["greedy"], steered["greedy"])
        passed = tokens.identical and routes.max_abs_logit_diff <= tolerance
    return LlamaCppReport(
        variant=variant.name,
        llama_cpp_version=baked["version"],
        alpha=alpha,
        base_gguf=str(source),
        prompts=len(opened.prompts),
        new_tokens=new_tokens,
        baked_vs_control_vector=routes,
        baked_vs_control_vector_tokens=tokens,
        tolerance=tolerance,
        baked_vs_transformers=to_transformers,
        baked_vs_transformers_tokens=Agreement.between(hf_variant["greedy"], baked["greedy"]),
        noise_floor=floor,
        passed=passed,
    )
