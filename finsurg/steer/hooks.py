"""The offset hooks of a surgery, in TransformerLens and in plain PyTorch, and runs through the bridge.

Every place that adds a recipe's offsets at inference time uses these two: `offset_hooks` for a
TransformerLens bridge and `offsets_added` for a plain transformers model. Where they land comes
from the architecture descriptor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from finsurg.steer.arch import Architecture

HookList = list[tuple[str, Callable]]


def boot_bridge(path: Path, hf_model, tokenizer, dtype: torch.dtype = torch.float32):
    """Wrap an already loaded HF model (on its device); no weight processing, so the residual basis is the HF one."""
    from transformer_lens.model_bridge import TransformerBridge

    device = str(hf_model.get_input_embeddings().weight.device)
    return TransformerBridge.boot_transformers(
        str(path), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )


def add_hook(vector: torch.Tensor, then: Callable[[torch.Tensor], None] | None = None) -> Callable:
    """A TransformerLens hook that adds vector at every position (and hands the result to `then`)."""

    def hook(activation: torch.Tensor, hook=None) -> torch.Tensor:
        shifted = activation + vector.to(activation.device, activation.dtype)
        if then is not None:
            then(shifted)
        return shifted

    return hook


def offset_hooks(offsets: dict[int, torch.Tensor], arch: Architecture) -> HookList:
    """Hooks that add offsets[L] at layer L's site, at every position."""
    return [(arch.tl_hook(layer), add_hook(vector)) for layer, vector in sorted(offsets.items())]


def shift_output(vector: torch.Tensor) -> Callable:
    """A plain PyTorch forward hook that adds vector to a module's output (the first item of a tuple)."""

    def hook(module, inputs, output):
        if isinstance(output, tuple):
            return (output[0] + vector.to(output[0].device, output[0].dtype), *output[1:])
        return output + vector.to(output.device, output.dtype)

    return hook


@contextmanager
def offsets_added(model, offsets: dict[int, torch.Tensor], arch: Architecture) -> Iterator[None]:
    """Plain PyTorch forward hooks on a transformers model: offsets[L] added to its site's output."""
    handles = [
        model.get_submodule(arch.module(layer)).register_forward_hook(shift_output(vector))
        for layer, vector in sorted(offsets.items())
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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


@contextmanager
def site_outputs(model, arch: Architecture) -> Iterator[dict[int, torch.Tensor]]:
    """Plain PyTorch forward hooks that record every layer's output at the site, by layer, per forward pass."""
    captured: dict[int, torch.Tensor] = {}

    def make(layer: int):
        def hook(module, inputs, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = [
        model.get_submodule(arch.module(layer)).register_forward_hook(make(layer))
        for layer in range(model.config.num_hidden_layers)
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
