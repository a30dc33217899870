"""One piece of a model at a time: a decoder block, the final norm or the head, read alone from a checkpoint.

The model is built once on the meta device (accelerate's `init_empty_weights`: no memory), and a
piece is materialised by assigning it the checkpoint's tensors under its prefix, strictly: a
tensor the config expects but the checkpoint lacks (or the reverse) is an error, not a zero.
Memory is one block, whatever the depth of the model.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import torch

from finsurg.bake.checkpoint import Checkpoint
from finsurg.errors import FinsurgError
from finsurg.model_source import read_config
from finsurg.steer.arch import Architecture
from finsurg.steer.hooks import shift_output

ROWS = 8192  # head rows per matmul in the streamed logits


class PieceError(FinsurgError):
    """A checkpoint's tensors do not fit the module its config describes."""


class BlockModel:
    """A checkpoint directory read piece by piece, on `device`: weights rounded to `weights`, computed in `dtype`."""

    def __init__(
        self,
        path: Path,
        arch: Architecture,
        weights: torch.dtype | None = None,
        dtype: torch.dtype = torch.float32,
        device="cpu",
    ):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.path, self.arch, self.weights, self.dtype = path, arch, weights, dtype
        self.device = torch.device(device)
        self.config = read_config(path)
        self.checkpoint = Checkpoint.open(path)
        hf_config = AutoConfig.for_model(**{k: v for k, v in self.config.items() if k != "transformers_version"})
        with init_empty_weights():  # buffers (rotary frequencies) stay real, parameters go to meta
            self.skeleton = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
        self.hf_config = self.skeleton.config
        self.rotary = self.skeleton.get_submodule(arch.rotary).to(self.device)

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    def piece(self, path: str, shared: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """The module at `path`, with exactly the checkpoint's tensors under that prefix.

        `shared` supplies tensors already in memory (by name under the prefix) that are known to
        equal this checkpoint's; the rest are read.
        """
        shared = shared or {}
        module = copy.deepcopy(self.skeleton.get_submodule(path))
        prefix = path + "."
        wanted = set(module.state_dict())
        present = {name[len(prefix) :] for name in self.checkpoint if name.startswith(prefix)}
        if wanted != present:
            missing, extra = sorted(wanted - present), sorted(present - wanted)
            detail = f"missing {prefix}{missing[0]}" if missing else f"unexpected {prefix}{extra[0]}"
            raise PieceError(f"{self.path.name}: {path} does not match its config ({detail})")
        state = {name: shared[name] if name in shared else self.tensor(prefix + name) for name in wanted}
        module.load_state_dict(state, assign=True, strict=True)
        return module.eval()

    def tensor(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        value = self.checkpoint[name] if rows is None else self.checkpoint.rows(name, *rows)
        if self.weights is not None and value.is_floating_point():
            value = value.to(self.weights)
        return value.to(self.device, self.dtype)

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
def site_added(block: torch.nn.Module, site: str, vector: torch.Tensor):
    """Add `vector` to the output of `site`, a module path relative to the block ("" is the block)."""
    handle = block.get_submodule(site).register_forward_hook(shift_output(vector))
    try:
        yield
    finally:
        handle.remove()
