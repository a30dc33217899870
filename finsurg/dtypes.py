"""The one table of dtypes: user-facing names, torch dtypes and safetensors codes."""

from __future__ import annotations

import torch

from finsurg.errors import FinsurgError

# safetensors header code -> torch dtype
CODES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODE_OF = {dtype: code for code, dtype in CODES.items()}
FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16"})
# the float dtypes weights are written and computed in, by the name config.json and the CLI use
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def name_of(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def weight_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise FinsurgError(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})") from None
