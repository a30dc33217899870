"""A variant as GGUF for llama.cpp: the base GGUF's metadata and tensors, plus F32 `blk.N.ffn_down.bias`.

An offset added after block N equals a bias on that block's ffn_down, which llama.cpp's `llama`
graph adds when the tensor is present. Tensors stream from the memory-mapped base one at a time:
with type `keep` the (quantized) blocks are copied byte for byte; `f32`, `f16` and `q8_0` convert
each 2-D tensor through gguf's own (de)quantizers, and 1-D tensors stay F32, as llama.cpp's
converter writes them. The file is written beside its target and renamed into place.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from finsurg import progress
from finsurg.errors import FinsurgError
from finsurg.io.gguf_reading import field_value, gguf_architecture, open_gguf

GGUF_TYPES = ("keep", "f32", "f16", "q8_0")
CONTROL_VECTOR_ARCH = "controlvector"


def bias_name(layer: int) -> str:
    return f"blk.{layer}.ffn_down.bias"


@contextmanager
def written(final: Path) -> Iterator[Path]:
    """A hidden sibling to write into, renamed over `final` on success and removed on failure."""
    partial = final.parent / f".{final.name}.partial-{os.getpid()}"
    try:
        yield partial
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)


def _target_type(tensor, kind: str):
    import gguf

    if kind == "keep" or len(tensor.shape) < 2:
        return None if kind == "keep" or tensor.tensor_type == gguf.GGMLQuantizationType.F32 else "f32"
    return kind


def _converted(tensor, kind: str) -> np.ndarray:
    import gguf

    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    if kind == "f32":
        return values
    if kind == "f16":
        return values.astype(np.float16)
    return gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)


RAW = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}


def _converted_info(tensor, kind: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and size of `_converted(tensor, kind)`, from the tensor's shape alone."""
    import gguf

    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first
    if kind == "q8_0":
        shape = gguf.quant_shape_to_byte_shape(shape, gguf.GGMLQuantizationType.Q8_0)
        dtype = np.dtype(np.uint8)
    else:
        dtype = np.dtype(np.float32 if kind == "f32" else np.float16)
    return shape, dtype, math.prod(shape) * dtype.itemsize


def write_baked_gguf(base: Path, offsets: dict[int, torch.Tensor], out: Path, kind: str = "keep") -> None:
    """The base GGUF with each offset as blk.N.ffn_down.bias (added to one the base already has)."""
    import gguf

    if kind not in GGUF_TYPES:
        raise FinsurgError(f"unknown GGUF --type {kind!r} (choose from {', '.join(GGUF_TYPES)})")
    reader = open_gguf(base)
    arch = gguf_architecture(reader, base)
    layers = int(field_value(reader, f"{arch}.block_count"))
    if offsets and max(offsets) >= layers:
        raise FinsurgError(f"{base}: the recipe steers layer {max(offsets)}, the GGUF has {layers} blocks")
    tensors = {t.name: t for t in reader.tensors}
    biases = {}
    for layer, offset in sorted(offsets.items()):
        value = offset.double().numpy()
        if bias_name(layer) in tensors:
            existing = tensors[bias_name(layer)]
            value = value + gguf.quants.dequantize(existing.data, existing.tensor_type).astype(np.float64)
        biases[bias_name(layer)] = value.astype(np.float32)
    with written(out) as partial:
        writer = gguf.GGUFWriter(partial, arch, endianess=reader.endianess)
        _copy_fields(reader, writer)
        plan = []
        for tensor in reader.tensors:
            if tensor.name in biases:
                continue
            convert = _target_type(tensor, kind)
            if convert is None:
                writer.add_tensor_info(
                    tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type
                )
            else:
                shape, dtype, nbytes = _converted_info(tensor, convert)
                raw = getattr(gguf.GGMLQuantizationType, RAW[convert])
                writer.add_tensor_info(tensor.name, shape, dtype, nbytes, raw)
            plan.append((tensor, convert))
        for name, value in biases.items():
            writer.add_tensor_info(name, value.shape, value.dtype, value.nbytes, gguf.GGMLQuantizationType.F32)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with progress.bar(total=len(plan) + len(biases), desc=f"gguf {out.name}") as bar:
            for tensor, convert in plan:
                data = tensor.data if convert is None else _converted(tensor, convert)
                writer.write_tensor_data(data, tensor_endianess=reader.endianess)
                bar.update(1)
            for value in biases.values():
                writer.write_tensor_data(value)
                bar.update(1)
        writer.close()


def _copy_fields(reader, writer) -> None:
    """Every key-value field, as gguf's own gguf_new_metadata copies them (the writer adds the architecture)."""
    import gguf

    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)


def write_control_vector(offsets: dict[int, torch.Tensor], model_hint: str, out: Path) -> None:
    """llama.cpp's control-vector GGUF: direction.N is added to the output of block N, scaled at run time."""
    import gguf

    if 0 in offsets:
        raise FinsurgError("llama.cpp control vectors cannot steer layer 0 (it rejects direction.0); use export")
    with written(out) as partial:
        writer = gguf.GGUFWriter(partial, CONTROL_VECTOR_ARCH)
        writer.add_string(f"{CONTROL_VECTOR_ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{CONTROL_VECTOR_ARCH}.layer_count", len(offsets))
        for layer, offset in sorted(offsets.items()):
            writer.add_tensor(f"direction.{layer}", offset.float().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
