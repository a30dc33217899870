"""Convert a GGUF checkpoint to a clean safetensors directory with transformers."""

from __future__ import annotations

from pathlib import Path

from finsurg.errors import FinsurgError
from finsurg.io.gguf_reading import gguf_architecture, open_gguf


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantize gguf to fp32 and save it with its tokenizer as an ordinary HF directory.

    A GGUF-loaded model refuses save_pretrained, so the weights move into a model built from a
    config without quantization_config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    gguf_architecture(open_gguf(gguf), gguf)  # refuse a truncated or foreign file before transformers reads it
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, KeyError, OSError) as exc:
        raise FinsurgError(f"cannot read {gguf} as GGUF: {str(exc).splitlines()[0][:160]}") from None
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    settings["architectures"] = ["LlamaForCausalLM"]
    clean = AutoModelForCausalLM.from_config(LlamaConfig.from_dict(settings), dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict(), strict=True)
    clean.tie_weights()
    clean.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
