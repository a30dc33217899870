"""Write one variant directory from a base checkpoint and its baked biases, as a stream.

Shards that need no change are reflinked or copied byte for byte; shards holding a changed
tensor, or cast to another dtype, are rewritten a slice at a time; new biases go into a shard of
their own. Then the index, the config and the other side files. The variant's own records (offsets,
surgery record, card, seal) are the variant package's (finsurg.variant.assemble).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from finsurg import progress
from finsurg.bake.bake import Baked, bake
from finsurg.dtypes import CODE_OF, CODES, FLOAT_CODES, name_of
from finsurg.errors import FinsurgError
from finsurg.io.checkpoint import INDEX_NAME, Checkpoint
from finsurg.io.safetensors_io import Entry, write_safetensors
from finsurg.io.shard_copy import SourceHashes, copy_shard
from finsurg.jsonfile import write_json
from finsurg.models.source import ResolvedModel
from finsurg.steer.arch import Architecture
from finsurg.steer.surgery import Surgery
from finsurg.variant.record import CARD_NAME, OFFSETS_NAME, SURGERY_NAME, VERIFICATION_NAME, BaseModelInfo

SKIPPED_FILES = {INDEX_NAME, CARD_NAME, "SHA256SUMS", OFFSETS_NAME, SURGERY_NAME, VERIFICATION_NAME}
SKIPPED_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".lock"}


@dataclass
class TensorsWritten:
    sums: dict[str, str]  # SHA256 of each file written
    copied: dict[str, str] = field(default_factory=dict)  # unchanged shard -> "reflink" or "copy"


class VariantWriter:
    """Writes variants of one base; the base's hashes are shared, so each base file is hashed once."""

    def __init__(
        self, model: ResolvedModel, dtype: torch.dtype | None = None, link: str = "auto", cap_context: bool = False
    ):
        self.model, self.link = model, link
        self.arch: Architecture = model.arch
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

    def write(self, surgery: Surgery, variant: str, out: Path) -> TensorsWritten:
        """The variant's checkpoint in `out`, an empty directory: shards, index, config, tokenizer and side files."""
        baked = bake(surgery, self.arch, self.model.config, self.dtype, self.checkpoint)
        sums, copied, weight_map, tensor_bytes = self._write_shards(baked, out, variant)
        write_json(
            out / INDEX_NAME, {"metadata": {"total_size": tensor_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        )
        self._copy_side_files(out, surgery.graft_width())
        return TensorsWritten(sums, copied)

    def _write_shards(self, baked: Baked, out: Path, variant: str):
        target_code = CODE_OF[self.dtype]
        changed = {name for name in baked if name in self.checkpoint}
        added = [baked.entry(name) for name in baked if name not in self.checkpoint]
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
                if not needs_cast and not changed & shard.tensors.keys():
                    copied[filename] = copy_shard(shard.path, out / filename, self.link, bar.update)
                    digest = self.hashes.get(shard.path)  # the bytes are the source's
                    tensor_bytes += sum(info.nbytes for info in shard.tensors.values())
                else:
                    entries = [
                        baked.entry(info.name)
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

    def base_info(self) -> BaseModelInfo:
        """The base as a surgery record names it, with the SHA256 of each weight file (hashed once)."""
        model = self.model
        return BaseModelInfo(
            name=model.name,
            source=model.source,
            path=str(model.path),
            architecture=model.architecture,
            **model.provenance(),
            files={p.name: self.hashes.get(p) for p in model.weight_files()},
            gguf=str(model.gguf) if model.gguf else None,
            gguf_sha256=model.gguf_sha256,
        )

    def _copy_side_files(self, out: Path, grown: int) -> None:
        """Config (the family's biases on, or rewritten; MLPs `grown` wider), tokenizer, generation config and other
        non-weight files."""
        for path in sorted(self.model.path.iterdir()):
            if not path.is_file() or path.name in SKIPPED_FILES or path.suffix in SKIPPED_SUFFIXES:
                continue
            if path.name == "config.json":
                config = self.arch.config_of_variant(self.model.config, name_of(self.dtype), self.context_cap, grown)
                write_json(out / "config.json", config)
            else:
                shutil.copyfile(path, out / path.name)
