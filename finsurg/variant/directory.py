"""Reading a variant directory: its surgery record, the surgery it baked, and the reports beside them."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from finsurg.dtypes import weight_dtype
from finsurg.errors import FinsurgError
from finsurg.io.hashing import cached_sha256s
from finsurg.steer.bundle_report import CrossTalkReport
from finsurg.steer.surgery import Surgery
from finsurg.variant.eval_report import VariantEvalReport
from finsurg.variant.record import (
    CROSSTALK_NAME,
    EVAL_NAME,
    LLAMACPP_REPORT_NAME,
    OFFSETS_NAME,
    SURGERY_NAME,
    VERIFICATION_NAME,
    VLLM_REPORT_NAME,
    Record,
    SurgeryRecord,
    read_record,
)
from finsurg.variant.reports import LlamaCppReport, VerificationReport, VllmReport

REPORT_FILES: dict[type[Record], str] = {
    VerificationReport: VERIFICATION_NAME,
    VllmReport: VLLM_REPORT_NAME,
    LlamaCppReport: LLAMACPP_REPORT_NAME,
    VariantEvalReport: EVAL_NAME,
    CrossTalkReport: CROSSTALK_NAME,
}


class Variant:
    """What a variant directory says about itself: surgery record, baked offsets and reports."""

    def __init__(self, directory: Path):
        self.directory = directory
        if not directory.is_dir():
            raise FinsurgError(f"variant directory not found: {directory}")
        self.record: SurgeryRecord = read_record(
            directory / SURGERY_NAME, SurgeryRecord, f"{directory} has no {SURGERY_NAME}; it is not a finsurg variant"
        )
        try:
            with safe_open(directory / OFFSETS_NAME, "pt") as handle:
                raw = {name: handle.get_tensor(name) for name in handle.keys()}
                metadata = handle.metadata()
        except (FileNotFoundError, SafetensorError, OSError) as exc:
            raise FinsurgError(f"{directory}: cannot read {OFFSETS_NAME} ({exc})") from None
        self.surgery = Surgery.from_tensors(raw, metadata)  # rounded to the variant's dtype, held in float32

    @property
    def name(self) -> str:
        return self.record.variant

    @property
    def dtype(self) -> str:
        return self.record.dtype

    @property
    def weight_dtype(self) -> torch.dtype:
        """What the variant's weights, its grafted neurons included, are stored in."""
        return weight_dtype(self.dtype)

    @property
    def first_layer(self) -> int:
        return self.surgery.layers[0]

    def report(self, kind: type[Record]) -> Record | None:
        path = self.directory / REPORT_FILES[kind]
        return read_record(path, kind, "") if path.is_file() else None

    def base_path(self, override: Path | None) -> Path:
        path = override or Path(self.record.base_model.path)
        if not path.is_dir():
            raise FinsurgError(f"base model directory not found: {path}; pass --model with the base")
        return path

    def check_base_hashes(self, base: Path) -> None:
        files = self.record.base_model.files
        missing = next((name for name in files if not (base / name).is_file()), None)
        if missing is not None:
            raise FinsurgError(f"{base} is not the base this variant was made from ({missing} is missing)")
        for (name, digest), actual in zip(files.items(), cached_sha256s([base / name for name in files])):
            if actual != digest:
                raise FinsurgError(f"{base} is not the base this variant was made from ({name} differs)")


def find_variants(paths: list[Path]) -> list[Path]:
    """Variant directories, given as themselves or as an export directory that holds them."""
    found = []
    for path in paths:
        if not path.is_dir():
            raise FinsurgError(f"not a directory: {path}")
        if (path / SURGERY_NAME).is_file():
            found.append(path)
            continue
        children = sorted(p for p in path.iterdir() if (p / SURGERY_NAME).is_file())
        if not children:
            raise FinsurgError(f"{path} holds no finsurg variant (no {SURGERY_NAME} in it or its subdirectories)")
        found += children
    return found
