"""Fold a recipe's residual offsets into `mlp.down_proj.bias` and write variant directories.

Shards that need no change are copied byte for byte; biases go into a new shard.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from finsurg import DISCLAIMER, __version__
from finsurg.exporter.checkpoint import INDEX_NAME, Checkpoint
from finsurg.exporter.safetensors_io import FLOAT_CODES, TORCH_DTYPES, Entry, write_safetensors
from finsurg.exporter.seal import seal
from finsurg.exporter.shard_copy import SourceHashes, copy_shard
from finsurg.model_source import ResolvedModel
from finsurg.recipe import Recipe, check_alpha

OFFSETS_NAME = "finsurg_offsets.safetensors"
SURGERY_NAME = "finsurg_surgery.json"
SURGERY_FORMAT = "finsurg.surgery/1"
PLOTS_DIR = "plots"
VARIANT_SIGNS = {"steered": 1.0, "conservative": -1.0}
DTYPE_CHOICES = {"keep": None, "float32": "F32", "bfloat16": "BF16", "float16": "F16"}
SKIPPED_FILES = {INDEX_NAME, "README.md", "SHA256SUMS", OFFSETS_NAME, SURGERY_NAME, "verification.json"}
SKIPPED_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".lock"}


def bias_name(layer: int, proj: str) -> str:
    return f"model.layers.{layer}.mlp.{proj}.bias"


@dataclass
class ExportResult:
    variant: str
    alpha: float
    path: Path
    dtype: str
    bytes_written: int
    copied: dict[str, str] = field(default_factory=dict)  # unchanged shard -> "reflink" or "copy"


def bake_variant(
    model: ResolvedModel,
    recipe: Recipe,
    alpha: float,
    variant: str,
    out: Path,
    dtype: str = "keep",
    source_hashes: SourceHashes | None = None,
    progress: bool = True,
    link: str = "auto",
) -> ExportResult:
    """Write one complete variant directory into `out`, an empty directory.

    `source_hashes` is shared between the variants of one export, so each base file is hashed once.
    """
    alpha = check_alpha(alpha)
    source_hashes = SourceHashes() if source_hashes is None else source_hashes
    checkpoint = Checkpoint.open(model.path)
    layers = model.num_layers
    names = checkpoint.names()
    down0 = checkpoint.info("model.layers.0.mlp.down_proj.weight")
    gate0 = checkpoint.info("model.layers.0.mlp.gate_proj.weight")
    hidden, intermediate = down0.shape[0], gate0.shape[0]
    for layer in range(layers):
        checkpoint.info(f"model.layers.{layer}.mlp.down_proj.weight")
    target_code = DTYPE_CHOICES[dtype] or down0.dtype
    target = TORCH_DTYPES[target_code]

    offsets = {layer: value.to(target) for layer, value in recipe.offsets(alpha).items()}
    changed: dict[str, torch.Tensor] = {}
    new_biases: list[Entry] = []
    for layer in range(layers):
        for proj, size in (("gate_proj", intermediate), ("up_proj", intermediate), ("down_proj", hidden)):
            name = bias_name(layer, proj)
            shift = offsets.get(layer) if proj == "down_proj" else None
            if name in names:
                if shift is not None:
                    current = checkpoint.shard_of(name).read(name)
                    changed[name] = (current.double() + shift.double()).to(target)
            else:
                value = torch.zeros(size, dtype=target) if shift is None else shift.clone()
                new_biases.append(Entry.of(name, value))

    count = len(checkpoint.shards) + (1 if new_biases else 0)
    shard_names = [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]
    sums: dict[str, str] = {}
    copied: dict[str, str] = {}
    weight_map: dict[str, str] = {}
    tensor_bytes = 0
    total = checkpoint.total_bytes
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"bake {variant}", disable=not progress or None) as bar:
        for shard, filename in zip(checkpoint.shards, shard_names):
            needs_cast = any(
                info.dtype in FLOAT_CODES and info.dtype != target_code for info in shard.tensors.values()
            )
            touched = changed.keys() & shard.tensors.keys()
            source_hashes.start(shard.path)
            if not needs_cast and not touched:
                copied[filename] = copy_shard(shard.path, out / filename, link, bar.update)
                digest = source_hashes.get(shard.path)  # the bytes are the source's
                tensor_bytes += sum(info.nbytes for info in shard.tensors.values())
            else:
                entries = [
                    Entry.of(info.name, changed[info.name])
                    if info.name in changed
                    else Entry(
                        info.name,
                        target_code if info.dtype in FLOAT_CODES else info.dtype,
                        info.shape,
                        lambda info=info, shard=shard: shard.cast_chunks(info, target_code),
                    )
                    for info in shard.tensors.values()
                ]
                digest = write_safetensors(out / filename, entries, bar.update)
                tensor_bytes += sum(entry.nbytes for entry in entries)
            sums[filename] = digest
            weight_map.update({name: filename for name in shard.tensors})
        if new_biases:
            sums[shard_names[-1]] = write_safetensors(out / shard_names[-1], new_biases)
            weight_map.update({entry.name: shard_names[-1] for entry in new_biases})
            tensor_bytes += sum(entry.nbytes for entry in new_biases)

    index = {"metadata": {"total_size": tensor_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    _write_json(out / INDEX_NAME, index)
    _copy_side_files(model, out, target)
    _copy_plots(recipe, out)
    save_file(
        {f"offset.{layer}": value.float().contiguous() for layer, value in sorted(offsets.items())},
        out / OFFSETS_NAME,
        metadata={"format": "pt"},
    )
    _write_json(out / SURGERY_NAME, surgery_record(model, recipe, alpha, variant, target, source_hashes))
    for path in out.iterdir():
        if path.is_file():
            path.chmod(0o644)  # safetensors writes 0600; variants are meant to be shared and served
    sums = seal(out, known=sums)
    written = sum((out / name).stat().st_size for name in sums)
    return ExportResult(variant, alpha, out, str(target).removeprefix("torch."), written, copied)


def surgery_record(
    model: ResolvedModel, recipe: Recipe, alpha: float, variant: str, target: torch.dtype, hashes: SourceHashes
) -> dict:
    return {
        "format": SURGERY_FORMAT,
        "finsurg_version": __version__,
        "variant": variant,
        "alpha": alpha,
        "dtype": str(target).removeprefix("torch."),
        "baked_into": "model.layers.{L}.mlp.down_proj.bias",
        "base_model": {
            "name": model.name,
            "source": model.source,
            "path": str(model.path),
            "architecture": model.architecture,
            **model.provenance(),
            "files": {p.name: hashes.get(p) for p in model.weight_files()},
        },
        "recipe": recipe.to_dict(),
        "recipe_origin": recipe.origin,
        "steering_vectors_sha256": _vector_digest(recipe) if recipe.has_steering else None,
        "disclaimer": DISCLAIMER,
    }


def _vector_digest(recipe: Recipe) -> str:
    digest = hashlib.sha256()
    for layer in recipe.layers:
        digest.update(recipe.vectors[layer].float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _copy_plots(recipe: Recipe, out: Path) -> None:
    """The analysis plots beside the recipe, for the model card."""
    if recipe.source_dir is None or not (recipe.source_dir / PLOTS_DIR).is_dir():
        return
    plots = sorted((recipe.source_dir / PLOTS_DIR).glob("*.png"))
    if plots:
        (out / PLOTS_DIR).mkdir()
        for path in plots:
            shutil.copyfile(path, out / PLOTS_DIR / path.name)


def _copy_side_files(model: ResolvedModel, out: Path, target: torch.dtype) -> None:
    """Config (with mlp_bias on), tokenizer, generation config and other non-weight files."""
    for path in sorted(model.path.iterdir()):
        if not path.is_file() or path.name in SKIPPED_FILES or path.suffix in SKIPPED_SUFFIXES:
            continue
        if path.name == "config.json":
            config = json.loads(path.read_text())
            config["mlp_bias"] = True
            config["dtype"] = str(target).removeprefix("torch.")
            if "torch_dtype" in config:
                config["torch_dtype"] = config["dtype"]
            _write_json(out / "config.json", config)
        else:
            shutil.copyfile(path, out / path.name)
