"""Where a command computes and whether it fits: device choice, compute dtype, memory budget, estimates.

Every command that runs a model asks `plan` before loading anything. The estimate comes from the
config alone (parameter count times bytes per parameter, plus activations); when it exceeds the
budget (`--max-memory`, default what is free on the device), the command refuses with one line
that names the figures and the flag that helps, instead of being killed half-way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psutil
import torch

from finsurg.dtypes import weight_dtype
from finsurg.errors import FinsurgError
from finsurg.options import DEVICE_CHOICES, DEVICE_PATTERN


class MemoryBudgetError(FinsurgError):
    """The estimated peak exceeds the budget: refused before anything is loaded."""


GIB = 1024**3


def resolve_device(spec: str = "auto") -> torch.device:
    """auto means CUDA when present; a CUDA device that is not there is refused, never silently replaced."""
    match = re.fullmatch(DEVICE_PATTERN, spec or "")
    if match is None:
        raise FinsurgError(f"unknown --device {spec!r} (choose {DEVICE_CHOICES})")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FinsurgError(f"--device {spec}: no CUDA device on this machine; use --device cpu (or auto)")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise FinsurgError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def compute_dtype(spec: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on a GPU, float32 on the CPU (where bf16 matmuls are slow and inexact)."""
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return weight_dtype(spec)


def parse_size(text: str) -> int:
    from accelerate.utils import convert_file_size_to_int

    try:
        size = convert_file_size_to_int(text.strip())
    except (ValueError, TypeError):
        size = -1
    if size <= 0:
        raise FinsurgError(f"cannot parse --max-memory {text!r}: give a size like 20GiB, or 0=70GiB,cpu=100GiB")
    return size


def parse_max_memory(text: str | None) -> dict[str, int] | None:
    """`20GiB` (the chosen device) or accelerate's per-device form `0=70GiB,1=70GiB,cpu=100GiB`."""
    if text is None:
        return None
    limits = {}
    for part in text.split(","):
        key, _, size = part.rpartition("=")
        key = key.strip() or "default"
        if key not in ("default", "cpu") and not key.isdigit():
            raise FinsurgError(f"cannot parse --max-memory {text!r}: devices are GPU indices or cpu")
        limits[key] = parse_size(size)
    return limits


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device.index or 0)[0])
    return int(psutil.virtual_memory().available)


def budget(device: torch.device, max_memory: dict[str, int] | None) -> int:
    """Bytes the command may use on `device`: --max-memory where given (all devices, for a dispatched model)."""
    if not max_memory:
        return free_bytes(device)
    if "default" in max_memory:
        return max_memory["default"]
    if device.type == "cuda":
        return sum(v for k, v in max_memory.items() if k.isdigit())
    return max_memory.get("cpu", free_bytes(device))


def accelerate_max_memory(max_memory: dict[str, int] | None, device: torch.device) -> dict | None:
    """--max-memory in the form accelerate's device_map="auto" takes."""
    if not max_memory:
        return None
    if "default" in max_memory:
        key = (device.index or 0) if device.type == "cuda" else "cpu"
        return {key: max_memory["default"]}
    return {int(k) if k.isdigit() else k: v for k, v in max_memory.items()}


def parameter_count(config: dict) -> int:
    """Parameters of a decoder-only transformer, from its config."""
    hidden = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + hidden


@dataclass(frozen=True)
class Estimate:
    """A command's peak memory need on one device, and what it is made of."""

    what: str
    need: int
    detail: str

    def check(self, device: torch.device, available: int, hint: str) -> None:
        if self.need > available:
            raise MemoryBudgetError(
                f"{self.what} needs about {self.need / GIB:.1f} GiB ({self.detail}) but {available / GIB:.1f} GiB "
                f"is available on {device}; {hint}"
            )


def model_estimate(what: str, config: dict, dtype: torch.dtype, copies: int = 1, tokens: int = 4096) -> Estimate:
    """`copies` whole models in `dtype`, plus activations for `tokens` tokens and 10% for allocator slack."""
    params = parameter_count(config)
    size = torch.finfo(dtype).bits // 8
    weights = copies * params * size
    activations = tokens * (int(config["hidden_size"]) * 8 + int(config["vocab_size"])) * 4
    need = int((weights + activations) * 1.1)
    detail = f"{copies} x {params / 1e9:.2f}B parameters in {str(dtype).removeprefix('torch.')}"
    return Estimate(what, need, detail)


@dataclass(frozen=True)
class Placement:
    """A command's device, compute dtype and memory budget, resolved from its settings."""

    device: torch.device
    dtype: torch.dtype
    max_memory: dict[str, int] | None

    @classmethod
    def of(cls, device: str = "auto", dtype: str = "auto", max_memory: str | None = None) -> Placement:
        resolved = resolve_device(device)
        return cls(resolved, compute_dtype(dtype, resolved), parse_max_memory(max_memory))

    @property
    def budget(self) -> int:
        return budget(self.device, self.max_memory)

    @property
    def dispatch(self) -> dict | None:
        """max_memory for accelerate's device_map="auto" (CUDA only)."""
        return accelerate_max_memory(self.max_memory, self.device) if self.device.type == "cuda" else None

    def fits(self, config: dict, copies: int = 1) -> bool:
        return model_estimate("", config, self.dtype, copies).need <= self.budget

    def require(self, what: str, config: dict, copies: int = 1) -> None:
        """Refuse, before loading anything, a command whose estimated peak exceeds the budget."""
        estimate = model_estimate(what, config, self.dtype, copies)
        if estimate.need <= self.budget:
            return
        halved = model_estimate(what, config, torch.bfloat16, copies)
        if self.dtype == torch.float32 and halved.need <= self.budget:
            hint = "--compute-dtype bfloat16 halves it"
        elif self.device.type == "cpu":
            hint = "run it on a GPU with --device cuda (several GPUs: --max-memory 0=...,1=...)"
        else:
            hint = "give it more GPUs with --max-memory 0=...,1=..."
        estimate.check(self.device, self.budget, hint)
