"""What a surgery is: per-layer steers, each a residual offset with an optional gate.

A steer without a gate is always on: it is baked as a bias at its layer's site. A gated steer is
baked as grafted SwiGLU neurons (finsurg.steer.graft) that add its offset where its gate opens.
Every consumer (the bake, the hooks, the proof, the offsets file, GGUF, llama.cpp and lm-eval)
takes this one type; a layer may hold several steers, so several behaviours fit in one surgery.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import torch

from finsurg.steer.graft import ALIGN, NEURONS, Gate, Neurons, neurons


@dataclass(frozen=True)
class Steer:
    """One layer's residual offset (float32), added where `gate` opens, or everywhere without one."""

    layer: int
    offset: torch.Tensor
    gate: Gate | None = None
    behaviour: str = ""  # in a bundle, the behaviour the steer belongs to


@dataclass(frozen=True)
class Surgery:
    steers: tuple[Steer, ...] = ()

    @classmethod
    def of(cls, offsets: dict[int, torch.Tensor], gates: dict[int, Gate] | None = None) -> Surgery:
        """One steer per layer: offsets[L], gated by gates[L] where there is one."""
        gates = gates or {}
        return cls(tuple(Steer(layer, offsets[layer], gates.get(layer)) for layer in sorted(offsets)))

    def __bool__(self) -> bool:
        return bool(self.steers)

    @property
    def layers(self) -> list[int]:
        return sorted({steer.layer for steer in self.steers})

    @property
    def gated(self) -> bool:
        return any(steer.gate is not None for steer in self.steers)

    def at(self, layer: int) -> Surgery:
        """The steers of one layer."""
        return Surgery(tuple(steer for steer in self.steers if steer.layer == layer))

    def always(self) -> dict[int, torch.Tensor]:
        """The ungated offsets per layer (one layer's several summed in float64)."""
        by_layer: dict[int, list[torch.Tensor]] = {}
        for steer in self.steers:
            if steer.gate is None:
                by_layer.setdefault(steer.layer, []).append(steer.offset)
        return {
            layer: values[0] if len(values) == 1 else torch.stack([v.double() for v in values]).sum(0).float()
            for layer, values in sorted(by_layer.items())
        }

    def neurons(self, dtype: torch.dtype = torch.float32, divisor: float = 1.0) -> dict[int, Neurons]:
        """The grafted neurons of each gated layer, its gated steers' side by side, rounded to `dtype`."""
        by_layer: dict[int, list[Neurons]] = {}
        for steer in self.steers:
            if steer.gate is not None:
                by_layer.setdefault(steer.layer, []).append(neurons(steer.gate, steer.offset, dtype, divisor))
        return {layer: Neurons.joined(parts) for layer, parts in sorted(by_layer.items())}

    def graft_width(self) -> int:
        """How many neurons every layer of a variant grows by: whole aligned blocks, none without a gate."""
        counts: dict[int, int] = {}
        for steer in self.steers:
            if steer.gate is not None:
                counts[steer.layer] = counts.get(steer.layer, 0) + NEURONS
        return ALIGN * math.ceil(max(counts.values(), default=0) / ALIGN)

    def negated(self) -> Surgery:
        """The same steers with their offsets' signs flipped: the other side of the dial."""
        return Surgery(tuple(replace(s, offset=-s.offset) for s in self.steers))

    def rounded(self, dtype: torch.dtype) -> Surgery:
        """The offsets rounded to `dtype` and held in float32, as a variant records them; gates as they are."""
        return Surgery(tuple(replace(s, offset=s.offset.to(dtype).float()) for s in self.steers))

    def labelled(self, behaviour: str) -> Surgery:
        """The same steers, each marked as `behaviour`'s."""
        return Surgery(tuple(replace(s, behaviour=behaviour) for s in self.steers))

    @classmethod
    def joined(cls, parts: list[Surgery]) -> Surgery:
        """Several surgeries as one, ordered by layer (a layer's steers in the order of `parts`)."""
        return cls(tuple(sorted((s for part in parts for s in part.steers), key=lambda s: s.layer)))

    def same_as(self, other: Surgery) -> bool:
        """Bit for bit the same steers, in the same order."""
        return len(self.steers) == len(other.steers) and all(
            a.layer == b.layer
            and a.behaviour == b.behaviour
            and torch.equal(a.offset, b.offset)
            and _same_gate(a.gate, b.gate)
            for a, b in zip(self.steers, other.steers)
        )

    def keys(self) -> list[str]:
        """Each steer's key in the offsets file: `L`, then `L.k` for a layer's k-th steer."""
        keys, seen = [], {}
        for steer in self.steers:
            k = seen[steer.layer] = seen.get(steer.layer, -1) + 1
            keys.append(f"{steer.layer}" if k == 0 else f"{steer.layer}.{k}")
        return keys

    def metadata(self) -> dict[str, str]:
        """The offsets file's metadata: which behaviour each steer belongs to, where a bundle names them."""
        named = {key: s.behaviour for key, s in zip(self.keys(), self.steers) if s.behaviour}
        return {"format": "pt", **({"behaviours": json.dumps(named)} if named else {})}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The offsets file's form: `offset.L` and `gate.L.weight|bias`, `.k` after L for a layer's k-th steer."""
        tensors: dict[str, torch.Tensor] = {}
        for key, steer in zip(self.keys(), self.steers):
            tensors[f"offset.{key}"] = steer.offset.float().contiguous()
            if steer.gate is not None:
                tensors[f"gate.{key}.weight"] = steer.gate.weight.float().contiguous()
                tensors[f"gate.{key}.bias"] = torch.tensor([steer.gate.bias], dtype=torch.float32)
        return tensors

    @classmethod
    def from_tensors(cls, raw: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Surgery:
        """The surgery an offsets file holds (the inverse of `tensors` and `metadata`)."""
        named = json.loads((metadata or {}).get("behaviours", "{}"))
        steers = []
        for name, offset in raw.items():
            parts = name.split(".")
            if parts[0] != "offset":
                continue
            key = ".".join(parts[1:])
            weight = raw.get(f"gate.{key}.weight")
            gate = None if weight is None else Gate(weight, float(raw[f"gate.{key}.bias"][0]))
            steer = Steer(int(parts[1]), offset, gate, named.get(key, ""))
            steers.append((int(parts[1]), int(parts[2]) if len(parts) > 2 else 0, steer))
        return cls(tuple(steer for _, _, steer in sorted(steers, key=lambda item: item[:2])))


def _same_gate(a: Gate | None, b: Gate | None) -> bool:
    if a is None or b is None:
        return a is b
    return torch.equal(a.weight, b.weight) and a.bias == b.bias
