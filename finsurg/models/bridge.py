"""A TransformerLens bridge over an already loaded transformers model, and runs through it with hooks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

HookList = Sequence[tuple[str, Callable]]


def boot_bridge(path: Path, hf_model, tokenizer, dtype: torch.dtype = torch.float32):
    """Wrap an already loaded HF model (on its device); no weight processing, so the residual basis is the HF one."""
    from transformer_lens.model_bridge import TransformerBridge

    device = str(hf_model.get_input_embeddings().weight.device)
    return TransformerBridge.boot_transformers(
        str(path), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )


def greedy(bridge, ids: torch.Tensor, new_tokens: int, hooks: HookList = ()) -> list[int]:
    """Greedy continuation through the bridge with hooks active; the KV cache is used."""
    with bridge.hooks(fwd_hooks=list(hooks)):
        out = bridge.generate(
            ids, max_new_tokens=new_tokens, do_sample=False, stop_at_eos=False, verbose=False, use_past_kv_cache=True
        )
    return out[0, ids.shape[1] :].tolist()


def logits(bridge, ids: torch.Tensor, hooks: HookList = ()) -> torch.Tensor:
    with torch.no_grad(), bridge.hooks(fwd_hooks=list(hooks)):
        return bridge(ids)[0].float().cpu()
