"""The end-to-end check, layer-streamed: one decoder block in memory at a time, hidden states carried.

The base runs twice through each of its blocks (plain, and with the offsets added at the site),
the variant once; the logits of every position are compared. Greedy generation needs the whole
model for every new token, so this mode compares teacher-forced argmax at every prompt position.
"""

from __future__ import annotations

from pathlib import Path

import torch

from finsurg import progress
from finsurg.checks.blocks import BlockModel, surgery_added
from finsurg.steer.arch import Architecture
from finsurg.steer.surgery import Surgery


def streamed_runs(
    path: Path,
    arch: Architecture,
    weights: torch.dtype,
    prompts: list[torch.Tensor],
    surgery: Surgery | None,
    upto: int,
) -> dict[str, list]:
    """Logits of each prompt (plain, and hooked when a surgery is given) and the hidden states up to layer `upto`.

    Weights, and a surgery's grafted neurons, are rounded to `weights` (the variant's dtype) and computed in
    float32.
    """
    model = BlockModel(path, arch, weights)
    streams = {"plain": [model.embed(ids) for ids in prompts]}
    if surgery is not None:
        streams["hooked"] = [state.clone() for state in streams["plain"]]
    hidden = [[state.clone()] for state in streams["plain"]]
    with progress.bar(total=model.num_layers, desc=f"stream {path.name}") as bar:
        for layer in range(model.num_layers):
            block = model.block(layer)
            streams["plain"] = [model.run_block(block, state) for state in streams["plain"]]
            if surgery is not None:
                with surgery_added(block, layer, arch, surgery, weights, model.config):
                    streams["hooked"] = [model.run_block(block, state) for state in streams["hooked"]]
            if layer < upto:
                for states, state in zip(hidden, streams["plain"]):
                    states.append(state.clone())
            del block
            bar.update(1)
    runs = {name: [model.logits(state)[0].float() for state in states] for name, states in streams.items()}
    runs["hidden"] = hidden
    return runs
