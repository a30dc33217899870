"""TransformerLens 4 access to a local model, and the residual-offset hooks of neuron surgery."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

HookList = list[tuple[str, Callable]]


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def boot_bridge(path: Path, hf_model, tokenizer, dtype: torch.dtype = torch.float32):
    """Wrap an already loaded HF model; no weight processing, so the residual basis is the HF one."""
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(
        str(path), hf_model=hf_model, tokenizer=tokenizer, device="cpu", dtype=dtype
    )


def offset_hooks(offsets: dict[int, torch.Tensor]) -> HookList:
    """Hooks that add offsets[L] to the residual stream after decoder layer L, at every position."""

    def make(vector: torch.Tensor):
        def hook(resid: torch.Tensor, hook=None) -> torch.Tensor:
            return resid + vector.to(resid.dtype)

        return hook

    return [(resid_post(layer), make(vector)) for layer, vector in sorted(offsets.items())]


def greedy(bridge, ids: torch.Tensor, new_tokens: int, hooks: HookList = ()) -> list[int]:
    """Greedy continuation through the bridge with hooks active; the KV cache is used."""
    with bridge.hooks(fwd_hooks=list(hooks)):
        out = bridge.generate(
            ids, max_new_tokens=new_tokens, do_sample=False, stop_at_eos=False, verbose=False, use_past_kv_cache=True
        )
    return out[0, ids.shape[1] :].tolist()


def logits(bridge, ids: torch.Tensor, hooks: HookList = ()) -> torch.Tensor:
    with torch.no_grad(), bridge.hooks(fwd_hooks=list(hooks)):
        return bridge(ids)[0].float()
