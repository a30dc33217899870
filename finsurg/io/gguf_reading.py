"""Reading a GGUF file's header with the gguf package: a truncated or foreign file is one clear error."""

from __future__ import annotations

from pathlib import Path

from finsurg.errors import FinsurgError

BAKEABLE = ("llama",)  # general.architecture values whose graph adds blk.N.ffn_down.bias


def open_gguf(path: Path):
    import gguf

    if not path.is_file():
        raise FinsurgError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, struct.error, IndexError... for one cause
        raise FinsurgError(f"cannot read {path}: a truncated or corrupt GGUF file ({type(exc).__name__})") from None


def field_value(reader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def gguf_architecture(reader, where: Path) -> str:
    arch = field_value(reader, "general.architecture")
    if arch not in BAKEABLE:
        raise FinsurgError(
            f"{where}: GGUF architecture {arch!r} cannot be baked; finsurg bakes {', '.join(BAKEABLE)} "
            "(whose graph adds blk.N.ffn_down.bias)"
        )
    return arch
