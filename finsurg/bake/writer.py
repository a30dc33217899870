"""Write one variant directory from a base checkpoint and its baked biases, as a stream.

Shards that need no change are reflinked or copied byte for byte; shards holding a changed
tensor, or cast to another dtype, are rewritten a slice at a time; new biases go into a shard of
their own. Then the side files, the offsets, the surgery record, and the seal.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from finsurg import DISCLAIMER, __version__, progress
from finsurg.bake.bake import bake
from finsurg.bake.checkpoint import INDEX_NAME, Checkpoint
from finsurg.bake.safetensors_io import Entry, write_safetensors
from finsurg.bake.shard_copy import SourceHashes, copy_shard
from finsurg.dtypes import CODE_OF, CODES, FLOAT_CODES, name_of
from finsurg.errors import FinsurgError
from finsurg.jsonfile import write_json
from finsurg.model_source import ResolvedModel
from finsurg.packs import Pack
from finsurg.steer.arch import Architecture, for_config
from finsurg.steer.recipe import ANALYSIS_NAME, Recipe, check_alpha
from finsurg.variant.record import (
    CARD_NAME,
    OFFSETS_NAME,
    PLOTS_DIR,
    SURGERY_NAME,
    VERIFICATION_NAME,
    BaseModelInfo,
    SurgeryRecord,
)
from finsurg.variant.seal import seal

SKIPPED_FILES = {INDEX_NAME, CARD_NAME, "SHA256SUMS", OFFSETS_NAME, SURGERY_NAME, VERIFICATION_NAME}
SKIPPED_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".lock"}


@dataclass
class ExportResult:
    variant: str
    alpha: float
    path: Path
    dtype: str
    bytes_written: int
    sums: dict[str, str]  # SHA256SUMS as written
    copied: dict[str, str] = field(default_factory=dict)  # unchanged shard -> "reflink" or "copy"


class VariantWriter:
    """Writes variants of one base; the base's hashes are shared, so each base file is hashed once."""

    def __init__(
        self, model: ResolvedModel, dtype: torch.dtype | None = None, link: str = "auto", cap_context: bool = False
    ):
        self.model, self.link = model, link
        self.arch: Architecture = for_config(model.config, model.name)
        window = self.arch.window_short_of_context(model.config)
        if window and not cap_context:
            raise FinsurgError(
                f"{model.name}: its sliding window ({window} tokens) is shorter than its context "
                f"({model.config.get('max_position_embeddings')}); the {self.arch.variant_architecture} rewrite attends "
                f"to the whole context, so it is exact only up to {window} tokens; pass --cap-context to write the "
                f"variant with max_position_embeddings {window}"
            )
        self.context_cap = window if cap_context else None
        self.checkpoint = Checkpoint.open(model.path)
        for layer in range(model.num_layers):
            for name in self.arch.weight_names(layer):
                self.checkpoint.info(name)
        self.dtype = dtype or CODES[self.checkpoint.info(self.arch.weight_names(0)[0]).dtype]
        self.hashes = SourceHashes()

    def bytes_to_write(self, linked: bool) -> int:
        """What one variant adds to the output filesystem: every shard (none that a reflink shares) plus biases."""
        target = CODE_OF[self.dtype]
        total = 0
        for shard in self.checkpoint.shards:
            cast = any(i.dtype in FLOAT_CODES and i.dtype != target for i in shard.tensors.values())
            if cast or not linked:
                total += sum(
                    (math.prod(i.shape) * self.dtype.itemsize if i.dtype in FLOAT_CODES else i.nbytes)
                    for i in shard.tensors.values()
                )
        biases = (
            sum(self.arch.bias_size(b.name, self.model.config) for b in self.arch.biases)
            * self.model.num_layers
            * self.dtype.itemsize
        )
        return total + biases + 16 * 1024 * 1024  # side files, index, offsets, card

    def write(self, recipe: Recipe, alpha: float, variant: str, out: Path) -> ExportResult:
        """One complete variant directory in `out`, an empty directory."""
        alpha = check_alpha(alpha)
        biases = bake(recipe.offsets(alpha), self.arch, self.model.config, self.dtype, self.checkpoint)
        sums, copied, weight_map, tensor_bytes = self._write_shards(biases, out, variant)
        write_json(
            out / INDEX_NAME, {"metadata": {"total_size": tensor_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        )
        self._copy_side_files(out)
        _copy_plots(recipe, out)
        offsets = {layer: value.to(self.dtype) for layer, value in recipe.offsets(alpha).items()}
        save_file(
            {f"offset.{layer}": value.float().contiguous() for layer, value in sorted(offsets.items())},
            out / OFFSETS_NAME,
            metadata={"format": "pt"},
        )
        write_json(out / SURGERY_NAME, self._record(recipe, alpha, variant).model_dump(mode="json"))
        for path in out.iterdir():
            if path.is_file():
                path.chmod(0o644)  # safetensors writes 0600; variants are meant to be shared and served
        sums = seal(out, known=sums)
        written = sum((out / name).stat().st_size for name in sums)
        return ExportResult(variant, alpha, out, name_of(self.dtype), written, sums, copied)

    def _write_shards(self, biases: dict[str, torch.Tensor], out: Path, variant: str):
        target_code = CODE_OF[self.dtype]
        changed = {name: value for name, value in biases.items() if name in self.checkpoint}
        added = [Entry.of(name, value) for name, value in biases.items() if name not in self.checkpoint]
        shards = self.checkpoint.shards
        count = len(shards) + (1 if added else 0)
        names = [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]
        sums: dict[str, str] = {}
        copied: dict[str, str] = {}
        weight_map: dict[str, str] = {}
        tensor_bytes = 0
        with progress.bar(total=self.checkpoint.total_bytes, unit="B", unit_scale=True, desc=f"bake {variant}") as bar:
            for shard, filename in zip(shards, names):
                needs_cast = any(i.dtype in FLOAT_CODES and i.dtype != target_code for i in shard.tensors.values())
                self.hashes.start(shard.path)
                if not needs_cast and not changed.keys() & shard.tensors.keys():
                    copied[filename] = copy_shard(shard.path, out / filename, self.link, bar.update)
                    digest = self.hashes.get(shard.path)  # the bytes are the source's
                    tensor_bytes += sum(info.nbytes for info in shard.tensors.values())
                else:
                    entries = [
                        Entry.of(info.name, changed[info.name])
                        if info.name in changed
                        else Entry(
                            info.name,
                            target_code if info.dtype in FLOAT_CODES else info.dtype,
                            info.shape,
                            lambda info=info, shard=shard: shard.slices(
                                info, self.dtype if info.dtype in FLOAT_CODES else CODES[info.dtype]
                            ),
                        )
                        for info in shard.tensors.values()
                    ]
                    digest = write_safetensors(out / filename, entries, bar.update)
                    tensor_bytes += sum(entry.nbytes for entry in entries)
                sums[filename] = digest
                weight_map.update({name: filename for name in shard.tensors})
            if added:
                sums[names[-1]] = write_safetensors(out / names[-1], added)
                weight_map.update({entry.name: names[-1] for entry in added})
                tensor_bytes += sum(entry.nbytes for entry in added)
        return sums, copied, weight_map, tensor_bytes

    def _record(self, recipe: Recipe, alpha: float, variant: str) -> SurgeryRecord:
        model = self.model
        return SurgeryRecord(
            finsurg_version=__version__,
            variant=variant,
            alpha=alpha,
            dtype=name_of(self.dtype),
            baked_into=self.arch.site.bias.replace("{layer}", "{L}"),
            site=self.arch.site.name,
            rewritten_as=self.arch.variant_architecture if self.arch.rewrite else None,
            context_cap=self.context_cap,
            base_model=BaseModelInfo(
                name=model.name,
                source=model.source,
                path=str(model.path),
                architecture=model.architecture,
                **model.provenance(),
                files={p.name: self.hashes.get(p) for p in model.weight_files()},
                gguf=str(model.gguf) if model.gguf else None,
                gguf_sha256=model.gguf_sha256,
            ),
            recipe=recipe.spec,
            recipe_origin=recipe.origin,
            steering_vectors_sha256=_vector_digest(recipe) if recipe.has_steering else None,
            card=Pack.load(recipe.spec.pack).manifest.card,
            behaviour=_behaviour(recipe),
            disclaimer=DISCLAIMER,
        )

    def _copy_side_files(self, out: Path) -> None:
        """Config (the family's biases on, or rewritten), tokenizer, generation config and other non-weight files."""
        for path in sorted(self.model.path.iterdir()):
            if not path.is_file() or path.name in SKIPPED_FILES or path.suffix in SKIPPED_SUFFIXES:
                continue
            if path.name == "config.json":
                config = self.arch.config_of_variant(self.model.config, name_of(self.dtype), self.context_cap)
                write_json(out / "config.json", config)
            else:
                shutil.copyfile(path, out / path.name)


def _behaviour(recipe: Recipe) -> dict | None:
    """The held-out effects and examples of the analysis beside the recipe, for the model card."""
    path = recipe.source_dir / ANALYSIS_NAME if recipe.source_dir else None
    if path is None or not path.is_file():
        return None
    behaviour = json.loads(path.read_text()).get("behaviour")
    if not behaviour:
        return None
    heldout = {name: {k: v for k, v in row.items() if k != "per_item"} for name, row in behaviour["heldout"].items()}
    return {
        "heldout": heldout,
        "examples": behaviour["examples"],
        "splits": behaviour["splits"],
        "tuning": {"budget": behaviour["tuning"]["budget"], "chosen": behaviour["tuning"]["chosen"]},
    }


def _vector_digest(recipe: Recipe) -> str:
    digest = hashlib.sha256()
    for layer in recipe.layers:
        digest.update(recipe.vectors[layer].float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _copy_plots(recipe: Recipe, out: Path) -> None:
    """The analysis plots beside the recipe, for the model card."""
    if recipe.source_dir is None or not (recipe.source_dir / PLOTS_DIR).is_dir():
        return
    plots = sorted((recipe.source_dir / PLOTS_DIR).glob("*.png"))
    if plots:
        (out / PLOTS_DIR).mkdir()
        for path in plots:
            shutil.copyfile(path, out / PLOTS_DIR / path.name)
