"""The monitor as a stock `*ForSequenceClassification` checkpoint: the base cut after the probe layer L.

The classifier's final hidden state must be exactly what the probes read, layer L's normed MLP input. So
layer L keeps its attention, its MLP writes nothing (its down projection is zero), and the final norm is
layer L's MLP norm: norm_L(h + 0) is the MLP's input bit for bit. The head (`score`) holds the probes.
Tensors are streamed from the base a bounded slice at a time; nothing loads the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from finsurg.dtypes import CODE_OF, CODES
from finsurg.errors import FinsurgError
from finsurg.io.checkpoint import Checkpoint
from finsurg.io.safetensors_io import Entry, tensor_bytes, write_safetensors
from finsurg.jsonfile import read_json
from finsurg.monitor.conversations import exchange, render
from finsurg.monitor.probes import Rates
from finsurg.packs.manifest import GENERIC_DISCLAIMER
from finsurg.steer.arch import Architecture, Monitor

FORMAT = "finsurg.monitor/1"
SPEC_NAME = "monitor.json"
WEIGHTS_NAME = "model.safetensors"
PER_LAYER_KEYS = ("layer_types",)  # config lists with one entry per layer, cut with the layers


class MonitorSpec(BaseModel):
    """monitor.json: what finsurg needs beside the stock checkpoint to flag, and what the card reports."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    labels: list[str]
    thresholds: dict[str, float]  # on the head's raw logits, as every stack returns them before its sigmoid
    layer: int
    base: dict  # name, architecture, num_hidden_layers, embeddings_sha256
    recipe: str
    pack: str
    disclaimer: str = GENERIC_DISCLAIMER  # the pack's, printed with the monitor's output and on its card
    topic_source: str
    layers: dict[int, dict]
    tune: dict[str, Rates]
    heldout: dict[str, Rates]
    counts: dict[str, dict[str, int]]
    check: dict | None = None  # the classifier against the probes on the base's hooked hidden states

    @property
    def depth(self) -> int:
        return self.layer + 1

    @property
    def cost(self) -> float:
        """Decoder layers run per token, against the base's."""
        return self.depth / int(self.base["num_hidden_layers"])


def load_spec(directory: Path) -> MonitorSpec:
    if not directory.is_dir():
        raise FinsurgError(f"monitor directory not found: {directory}")
    raw = read_json(directory / SPEC_NAME, f"{directory} is not a finsurg monitor (no {SPEC_NAME})")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise FinsurgError(f"{directory / SPEC_NAME}: not a {FORMAT} monitor")
    try:
        return MonitorSpec.model_validate(raw)
    except ValueError as exc:
        raise FinsurgError(f"{directory / SPEC_NAME} is malformed: {str(exc).splitlines()[0]}") from None


def embeddings_sha256(checkpoint: Checkpoint, arch: Architecture) -> str:
    """The base's fingerprint: its embedding matrix's bytes."""
    import hashlib

    digest = hashlib.sha256()
    info = checkpoint.info(arch.embeddings)
    for block in checkpoint.slices(arch.embeddings, CODES[info.dtype]):
        digest.update(block)
    return digest.hexdigest()


def pad_token(tokenizer) -> tuple[str, int]:
    """A pad token that the chat template never emits: the classifier pools the last token that is not padding."""
    rendered = set(tokenizer(render(tokenizer, exchange("?", "."))).input_ids)
    candidates = [(tokenizer.pad_token, tokenizer.pad_token_id)] + list(
        zip(tokenizer.all_special_tokens, tokenizer.all_special_ids, strict=True)
    )
    for token, token_id in candidates:
        if token_id is not None and token_id not in rendered:
            return token, token_id
    raise FinsurgError(
        "every special token of the base's tokenizer appears in its rendered chat: the classifier would pool "
        "the wrong token of padded batches"
    )


def classifier_config(base: dict, monitor: Monitor, labels: list[str], layer: int, pad_id: int, dtype: str) -> dict:
    depth = layer + 1
    config = {key: value for key, value in base.items() if key not in ("auto_map", "quantization_config")}
    for key in PER_LAYER_KEYS:
        if isinstance(config.get(key), list):
            config[key] = config[key][:depth]
    config.update(
        architectures=[monitor.classifier],
        num_hidden_layers=depth,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        num_labels=len(labels),
        problem_type="multi_label_classification",
        pad_token_id=pad_id,
        dtype=dtype,
    )
    if "torch_dtype" in base:
        config["torch_dtype"] = dtype
    return config


def entries(checkpoint: Checkpoint, arch: Architecture, monitor: Monitor, layer: int, head: torch.Tensor) -> list:
    """The classifier's tensors, each streamed from the base or built: layers 0..L, the embeddings, the norm."""
    _, norm, zeroed = monitor.names(layer)
    zeroed += [
        name.removesuffix("weight") + "bias" for name in zeroed if name.removesuffix("weight") + "bias" in checkpoint
    ]
    prefix = arch.layers + "."
    kept = []
    for name in checkpoint:
        if name.startswith(prefix):
            if int(name[len(prefix) :].split(".", 1)[0]) > layer:
                continue
        elif name != arch.embeddings:
            continue  # the final norm and the LM head give way to layer L's norm and the probes
        kept.append(name)
    missing = [name for name in [norm, *zeroed] if name not in checkpoint]
    if missing:
        raise FinsurgError(f"{checkpoint.path}: tensor {missing[0]} not found; is this a {arch.family} checkpoint?")
    dtype = weight_dtype(checkpoint, arch)

    def streamed(source: str, target: str) -> Entry:
        info = checkpoint.info(source)
        return Entry(target, info.dtype, info.shape, lambda: checkpoint.slices(source, CODES[info.dtype]))

    def zeros(name: str) -> Entry:
        info = checkpoint.info(name)
        return Entry(name, info.dtype, info.shape, lambda: [bytes(info.nbytes)])

    built = [zeros(name) if name in zeroed else streamed(name, name) for name in kept]
    built.append(streamed(norm, arch.final_norm + ".weight"))
    built.append(Entry("score.weight", CODE_OF[dtype], tuple(head.shape), lambda: [tensor_bytes(head.to(dtype))]))
    return built


def weight_dtype(checkpoint: Checkpoint, arch: Architecture) -> torch.dtype:
    """The base's weight dtype (its embeddings'), which the classifier keeps."""
    return CODES[checkpoint.info(arch.embeddings).dtype]


def write_classifier(
    out: Path, checkpoint: Checkpoint, base_config: dict, arch: Architecture, trained, tokenizer
) -> None:
    """config.json, the weights and the tokenizer (with its pad token) into `out`; `trained` is probes.Trained."""
    layer, head = trained.layer, trained.head
    monitor = arch.monitoring(str(checkpoint.path))
    dtype = weight_dtype(checkpoint, arch)
    token, token_id = pad_token(tokenizer)
    tokenizer.pad_token = token
    config = classifier_config(base_config, monitor, trained.labels, layer, token_id, str(dtype).removeprefix("torch."))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_safetensors(out / WEIGHTS_NAME, entries(checkpoint, arch, monitor, layer, head))
    tokenizer.save_pretrained(out)


def sigmoid(value: float) -> float:
    """The score a stack's multi-label head reports for a raw logit."""
    return 1 / (1 + math.exp(-value)) if value > -700 else 0.0


class TransformersClassifier:
    """The monitor loaded as any user loads it: AutoModelForSequenceClassification in float32, its own tokenizer."""

    def __init__(self, directory: Path, device: torch.device | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = device or torch.device("cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModelForSequenceClassification.from_pretrained(directory, dtype=torch.float32)
        self.model.to(self.device).eval()

    def logits(self, texts: list[str]) -> torch.Tensor:
        """[texts, labels] raw logits, float32 on the CPU; the batch padded as the tokenizer pads."""
        return self.logits_of_ids(self.tokenizer(texts)["input_ids"])

    def logits_of_ids(self, ids: list[list[int]]) -> torch.Tensor:
        """The same, from token ids already encoded (and cut) by the caller."""
        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            return self.model(**batch).logits.float().cpu()
