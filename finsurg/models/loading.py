"""Load a model directory with plain transformers, the way users of a variant will."""

from __future__ import annotations

from pathlib import Path

import torch


def load_model(
    path: Path,
    dtype: torch.dtype = torch.float32,
    compute: torch.dtype | None = None,
    device: torch.device | None = None,
    max_memory: dict | None = None,
):
    """Weights read as `dtype`, then computed in `compute` (default: the same), on `device`.

    On CUDA with a memory budget, accelerate dispatches the layers over the devices it names
    (device_map="auto"); otherwise the whole model goes to `device`. Eager attention:
    TransformerBridge switches to it, so exact comparisons need it too.
    """
    from transformers import AutoModelForCausalLM

    placement = {}
    if device is not None and device.type == "cuda":
        placement = {"device_map": "auto", "max_memory": max_memory} if max_memory else {"device_map": {"": device}}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager", **placement)
    if compute is not None and compute != dtype:
        model.to(compute)
    model.eval()
    return model


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def render_prompt(tokenizer, text: str, system: str | None = None) -> str:
    """The prompt as the model sees it in chat: through its chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{text}" if system else text


def prompt_ids(tokenizer, text: str, system: str | None = None) -> list[int]:
    """Token ids of the rendered prompt, exactly as the tokenizer makes them (BOS included or not)."""
    return tokenizer(render_prompt(tokenizer, text, system), add_special_tokens=True).input_ids


def encode(tokenizer, text: str) -> torch.Tensor:
    """prompt_ids as a [1, n] tensor."""
    return torch.tensor([prompt_ids(tokenizer, text)])


def hf_greedy(model, ids: torch.Tensor, new_tokens: int) -> list[int]:
    """Greedy tokens from plain transformers generate, never stopping early.

    The attention mask is explicit: inferred from pad ids, it would hide chat-template tokens
    that share the pad id (SmolLM2's pad is <|im_end|>).
    """
    ids = ids.to(model.device)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=0,
        do_sample=False,
        eos_token_id=None,
    )
    return out[0, ids.shape[1] :].tolist()
