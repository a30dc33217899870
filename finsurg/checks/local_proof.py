"""The layer-local proof that a variant is its base plus the recorded offsets, at any model size.

Structure: every tensor of the variant is the base's, byte for byte (whole shards by their
SHA256, the others one tensor at a time, cast to the variant's dtype), its bias tensors equal a
fresh bake of the recorded offsets bit for bit, and its config differs from the base's only where
the bake says. Semantics: each steered block and one unsteered block is built alone from the base,
and again as the variant the structure check proves was written (the base's weights and the bake's
biases under the config the bake writes), in float32; both get the same hidden states (the
verification prompts' first tokens' embeddings, rescaled to each input RMS), and the variant's block
must equal the base block with the offset added at the site, to float32 precision. The semantic half
reads nothing of the variant's files, so an export runs it while it writes them. Memory is one block;
time grows with the number of steered layers, never with depth.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from finsurg.bake.bake import bake
from finsurg.checks.blocks import BlockModel, surgery_added
from finsurg.dtypes import CODES, weight_dtype
from finsurg.io.checkpoint import Checkpoint
from finsurg.io.lazy_model import PieceError
from finsurg.models.source import read_config
from finsurg.steer.arch import Architecture
from finsurg.steer.surgery import Surgery
from finsurg.variant.directory import Variant
from finsurg.variant.reports import BlockCheck, LocalProof, StructureCheck

INPUT_RMS = (1.0, 16.0)  # residual streams sit in this range; the check holds at both ends
INPUT_TOKENS = 16  # of the first verification prompt: the identity is per position, attention mixes them
RELATIVE_TOLERANCE = 1e-5  # of the largest output value: about 80 float32 ulps


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().flatten().view(torch.uint8)


def config_changes(
    base: dict, variant: dict, arch: Architecture, dtype: str, context_cap: int | None, grown: int
) -> list[str]:
    """Keys where the variant's config differs from what the bake writes; empty when it is exact."""
    expected = arch.config_of_variant(base, dtype, context_cap, grown)
    return sorted(key for key in expected.keys() | variant.keys() if expected.get(key) != variant.get(key))


def check_structure(variant: Variant, base_path, arch: Architecture, sums: dict[str, str]) -> StructureCheck:
    base, baked = Checkpoint.open(base_path), Checkpoint.open(variant.directory)
    base_config = read_config(base_path)
    changes = config_changes(
        base_config,
        read_config(variant.directory),
        arch,
        variant.dtype,
        variant.record.context_cap,
        variant.surgery.graft_width(),
    )
    problems = [f"config.json differs from the bake's at {key}" for key in changes]
    target = variant.weight_dtype
    expected = bake(variant.surgery, arch, base_config, target, base)
    base_files = variant.record.base_model.files
    identical = compared = 0
    missing = sorted(set(base) - set(baked))
    problems += [f"tensor {name} is missing" for name in missing[:3]]
    for shard in baked.shards:
        source = next((name for name, digest in base_files.items() if digest == sums.get(shard.path.name)), None)
        if source is not None and set(base.shard(source).tensors) == set(shard.tensors):
            identical += 1
            continue
        for name, info in shard.tensors.items():
            compared += 1
            if name in expected:
                want = expected[name]
            elif name in base:
                want = base[name]
                want = want.to(target) if CODES[base.info(name).dtype].is_floating_point else want
            else:
                problems.append(f"tensor {name} is not the base's and not a bias the bake writes")
                continue
            if info.shape != tuple(want.shape) or not torch.equal(_bytes(baked[name]), _bytes(want)):
                kind = "baked tensor" if name in expected else "weight"
                problems.append(f"{kind} {name} differs from the {'bake' if name in expected else 'base'}")
    absent = sorted(set(expected) - set(baked))
    problems += [f"baked tensor {name} is missing" for name in absent[:3]]
    return StructureCheck(
        tensors=len(baked),
        identical_shards=identical,
        tensors_compared=compared,
        biases=len(expected),
        problems=problems[:10],
        passed=not problems,
    )


def proof_layers(surgery: Surgery, num_layers: int) -> list[int]:
    """Every steered layer and one unsteered one (the last before the first steered, else the first after)."""
    steered = surgery.layers
    unsteered = [layer for layer in range(num_layers) if layer not in steered]
    before = [layer for layer in unsteered if layer < steered[0]]
    extra = before[-1:] or unsteered[:1]
    return sorted(steered + extra)


def _inputs(base: BlockModel, prompt: torch.Tensor) -> torch.Tensor:
    """The first verification prompt's first tokens, embedded, rescaled to each input RMS: one batch row each."""
    embedded = base.embed(prompt[:, :INPUT_TOKENS])
    unit = embedded / embedded.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    return torch.cat([unit * rms for rms in INPUT_RMS])


@dataclass(frozen=True)
class Baking:
    """What the semantic half of the proof needs of one variant: its surgery as recorded (rounded to its
    dtype), its dtype and context cap."""

    surgery: Surgery
    dtype: str
    context_cap: int | None = None

    @classmethod
    def of(cls, variant: Variant) -> Baking:
        return cls(variant.surgery, variant.dtype, variant.record.context_cap)

    def same_as(self, other: Baking) -> bool:
        """Bit for bit the same surgery, dtype and context cap."""
        return (self.dtype, self.context_cap) == (other.dtype, other.context_cap) and self.surgery.same_as(
            other.surgery
        )


class BlockProof:
    """The proof's block checks of variants of one base: per variant, its proof layers' checks.

    A variant's block is the base block's tensors with the bake's biases laid over them, under the
    config the bake writes (strictly: a bias that config expects and the bake does not give is an
    error); `prompt` is the first verification prompt's token ids. `run` reads each base block once
    for all variants.
    """

    def __init__(
        self,
        base_path,
        arch: Architecture,
        surgeries: list[Baking],
        prompt: torch.Tensor,
        cancelled: threading.Event | None = None,
    ):
        weights = weight_dtype(surgeries[0].dtype)  # the base rounded as the variants' weights were
        self.arch, self.surgeries = arch, surgeries
        self.base = BlockModel(base_path, arch, weights)
        self.baked = [
            BlockModel(
                base_path,
                arch,
                weights,
                config=arch.config_of_variant(
                    self.base.config, baking.dtype, baking.context_cap, baking.surgery.graft_width()
                ),
                overlay=bake(baking.surgery, arch, self.base.config, weight_dtype(baking.dtype), self.base.checkpoint),
            )
            for baking in surgeries
        ]
        self.inputs = _inputs(self.base, prompt)
        self.cancelled = cancelled or threading.Event()  # set from another thread: run stops after the block in hand

    def run(self) -> list[list[BlockCheck]]:
        arch, base = self.arch, self.base
        site = arch.block_site()
        wanted = [proof_layers(baking.surgery, base.num_layers) for baking in self.surgeries]
        checks: list[list[BlockCheck]] = [[] for _ in self.surgeries]
        for layer in sorted(set().union(*wanted)):
            if self.cancelled.is_set():
                break
            base_block = base.block(layer)
            plain = base.run_block(base_block, self.inputs)  # shared by every variant without an offset here
            prefix = f"{arch.layers}.{layer}."
            written = {
                name.removeprefix(prefix) for baked in self.baked for name in baked.overlay if name.startswith(prefix)
            }
            shared = {name: value for name, value in base_block.state_dict().items() if name not in written}
            for k, baking in enumerate(self.surgeries):
                if layer in wanted[k]:
                    here = baking.surgery.at(layer)
                    offset = here.always().get(layer)
                    if not here:
                        reference = plain
                    elif not site and not here.gated:  # the block's own output: the hook adds exactly this
                        reference = plain + offset.to(plain.device, plain.dtype)
                    else:
                        dtype = weight_dtype(baking.dtype)
                        with surgery_added(base_block, layer, arch, here, dtype, base.config):
                            reference = base.run_block(base_block, self.inputs)
                    checks[k].append(_check_block(self.baked[k], layer, shared, here, self.inputs, reference))
            del base_block, shared, plain
        return checks


def _check_block(baked, layer, shared, here: Surgery, inputs: torch.Tensor, reference: torch.Tensor) -> BlockCheck:
    """The variant's block on the inputs against the base block's output with the offset at the site."""
    try:
        baked_block = baked.block(layer, shared)
    except PieceError as exc:
        return BlockCheck(layer=layer, steered=bool(here), problem=str(exc), passed=False)
    got = baked.run_block(baked_block, inputs)
    error = float((got - reference).abs().max())
    tolerance = RELATIVE_TOLERANCE * (1.0 + float(reference.abs().max()))
    return BlockCheck(
        layer=layer,
        steered=bool(here),
        max_abs_error=error,
        tolerance=tolerance,
        offset_effect=max((float(s.offset.abs().max()) for s in here.steers), default=0.0),
        passed=error <= tolerance,
    )


@dataclass
class Proven:
    """What an export proved while it wrote: the block checks with the bakings they ran on, and the structure
    of each variant already sealed, by its directory, with the sums it was checked against."""

    bakings: list[Baking]
    blocks: list[list[BlockCheck]]
    structures: dict[Path, tuple[dict[str, str], StructureCheck]] = field(default_factory=dict)

    def structure(self, variant: Variant, sums: dict[str, str]) -> StructureCheck | None:
        """The structure check of this directory, where it ran on these very sums."""
        known, check = self.structures.get(variant.directory, (None, None))
        return check if known == sums else None


def prove(
    variants: list[Variant],
    base_path,
    arch: Architecture,
    sums: list[dict[str, str]],
    prompts,
    proven: Proven | None = None,
) -> list[LocalProof]:
    """The proof of each variant of one base: structure, then its blocks (base blocks read once).

    `proven` holds checks already run (by an export, while it wrote). Its block checks stand only where the
    surgeries they ran on are bit for bit what each variant records, and a structure check only where it ran
    on the same directory and sums; the rest run here.
    """
    structures = []
    for variant, own in zip(variants, sums):
        known = None if proven is None else proven.structure(variant, own)
        structures.append(check_structure(variant, base_path, arch, own) if known is None else known)
    recorded = [Baking.of(variant) for variant in variants]
    if (
        proven is not None
        and len(proven.bakings) == len(recorded)
        and all(map(Baking.same_as, recorded, proven.bakings))
    ):
        blocks = proven.blocks
    else:
        blocks = BlockProof(base_path, arch, recorded, prompts[0]).run()
    return [
        LocalProof(
            structure=structure,
            blocks=own,
            input_rms=list(INPUT_RMS),
            input_tokens=int(min(INPUT_TOKENS, prompts[0].shape[1])),
            relative_tolerance=RELATIVE_TOLERANCE,
            passed=structure.passed and all(check.passed for check in own),
        )
        for structure, own in zip(structures, blocks)
    ]
