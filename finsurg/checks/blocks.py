"""A model's blocks, final norm and head, one at a time, where its architecture descriptor places them."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from finsurg.io.lazy_model import LazyModel
from finsurg.steer.arch import Architecture
from finsurg.steer.hooks import graft_output, shift_output
from finsurg.steer.surgery import Surgery

ROWS = 8192  # head rows per matmul in the streamed logits


class BlockModel(LazyModel):
    """A LazyModel that knows its family's layout: embeddings, blocks, rotary embedding, final norm and head."""

    def __init__(self, path: Path, arch: Architecture, weights: torch.dtype | None = None, **options):
        super().__init__(path, weights, **options)
        self.arch = arch
        self.rotary = self.skeleton.get_submodule(arch.rotary).to(self.device)

    def block(self, layer: int, shared: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        return self.piece(f"{self.arch.layers}.{layer}", shared)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of [batch, seq] ids, reading only those rows."""
        name = self.arch.embeddings
        rows = {int(i): self.tensor(name, (int(i), int(i) + 1))[0] for i in ids.unique()}
        table = torch.stack([rows[int(i)] for i in ids.flatten()])
        return table.reshape(*ids.shape, -1) * self.arch.embedding_scale(self.config)

    def run_block(self, block: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """A causal pass of one block over [batch, seq, hidden] states (no padding)."""
        seq = hidden.shape[1]
        positions = torch.arange(seq, device=self.device)[None]
        mask = torch.full((seq, seq), torch.finfo(hidden.dtype).min, device=self.device).triu(1)[None, None]
        with torch.no_grad():
            out = block(
                hidden,
                attention_mask=mask,
                position_ids=positions,
                position_embeddings=self.rotary(hidden, positions),
            )
        return out[0] if isinstance(out, tuple) else out

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, then the head a slice of rows at a time (the head is never whole in memory)."""
        norm = self.piece(self.arch.final_norm)
        with torch.no_grad():
            normed = norm(hidden)
        head = self.arch.head if self.arch.head in self.checkpoint else self.arch.embeddings
        vocab = self.checkpoint.info(head).shape[0]
        parts = [normed @ self.tensor(head, (start, min(start + ROWS, vocab))).T for start in range(0, vocab, ROWS)]
        return torch.cat(parts, dim=-1) / self.arch.logits_divisor(self.config)


@contextmanager
def surgery_added(block: torch.nn.Module, layer: int, arch: Architecture, surgery: Surgery, dtype, config: dict):
    """The block with its layer's ungated offsets added at the site and its gated steers' neurons (rounded to
    `dtype`) added to its MLP's output."""
    here = surgery.at(layer)
    with ExitStack() as stack:
        offset = here.always().get(layer)
        if offset is not None:
            stack.enter_context(output_hooked(block, arch.block_site(), shift_output(offset)))
        graft = here.neurons(dtype, arch.offset_divisor(config)).get(layer)
        if graft is not None:
            stack.enter_context(output_hooked(block, arch.block_mlp(), graft_output(graft)))
        yield


@contextmanager
def output_hooked(block: torch.nn.Module, module: str, hook):
    """A forward hook on `module`, a path relative to the block ("" is the block), while the context lasts."""
    handle = block.get_submodule(module).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
