"""A checkpoint read one module at a time: a decoder block, the final norm or the head, alone.

The model is built once on the meta device (accelerate's `init_empty_weights`: no memory), and a
piece is materialised by assigning it the checkpoint's tensors under its prefix, strictly: a
tensor the config expects but the checkpoint lacks (or the reverse) is an error, not a zero.
Memory is one piece, whatever the depth of the model. A checkpoint can be read under another config
with tensors of its own laid over the files' (`overlay`): a variant before it is written.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from finsurg.errors import FinsurgError
from finsurg.io.checkpoint import Checkpoint
from finsurg.jsonfile import read_json


class PieceError(FinsurgError):
    """A checkpoint's tensors do not fit the module its config describes."""


class LazyModel:
    """A checkpoint directory read piece by piece, on `device`: weights rounded to `weights`, computed in `dtype`."""

    def __init__(
        self,
        path: Path,
        weights: torch.dtype | None = None,
        dtype: torch.dtype = torch.float32,
        device="cpu",
        config: dict | None = None,
        overlay: dict[str, torch.Tensor] | None = None,
    ):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.path, self.weights, self.dtype = path, weights, dtype
        self.device = torch.device(device)
        self.config = config or read_json(path / "config.json", f"{path} has no config.json")
        self.checkpoint = Checkpoint.open(path)
        self.overlay = overlay or {}
        self.names = set(self.checkpoint) | set(self.overlay)
        hf_config = AutoConfig.for_model(**{k: v for k, v in self.config.items() if k != "transformers_version"})
        with init_empty_weights():  # buffers (rotary frequencies) stay real, parameters go to meta
            self.skeleton = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
        self.hf_config = self.skeleton.config

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
        present = {name[len(prefix) :] for name in self.names if name.startswith(prefix)}
        if wanted != present:
            missing, extra = sorted(wanted - present), sorted(present - wanted)
            detail = f"missing {prefix}{missing[0]}" if missing else f"unexpected {prefix}{extra[0]}"
            raise PieceError(f"{self.path.name}: {path} does not match its config ({detail})")
        state = {name: shared[name] if name in shared else self.tensor(prefix + name) for name in wanted}
        module.load_state_dict(state, assign=True, strict=True)
        return module.eval()

    def tensor(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        if name in self.overlay:
            value = self.overlay[name] if rows is None else self.overlay[name][rows[0] : rows[1]]
        else:
            value = self.checkpoint[name] if rows is None else self.checkpoint.rows(name, *rows)
        if self.weights is not None and value.is_floating_point():
            value = value.to(self.weights)
        return value.to(self.device, self.dtype)
