"""`finsurg monitor export` (and `finsurg export --monitor`): learn the probes, write the classifier, check it.

The check runs the written checkpoint with plain transformers and compares its logits with the probes applied
to the base's own hidden states, read through hooks, on held-out conversations: both in float32.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import torch

from finsurg import progress
from finsurg.analysis.batching import chunked, ensure_pad_token
from finsurg.devices import Placement
from finsurg.errors import FinsurgError
from finsurg.io.atomic import building, refuse_existing
from finsurg.io.checkpoint import Checkpoint
from finsurg.io.hashing import write_sums
from finsurg.models.loading import load_model, load_tokenizer
from finsurg.models.source import ResolvedModel
from finsurg.monitor.card import write_card
from finsurg.monitor.classifier import (
    SPEC_NAME,
    MonitorSpec,
    TransformersClassifier,
    embeddings_sha256,
    weight_dtype,
    write_classifier,
)
from finsurg.monitor.labelled import labelled, require_data
from finsurg.monitor.monitor_options import MonitorOptions
from finsurg.monitor.probes import last_token_inputs, train
from finsurg.packs import Pack, joined_disclaimers
from finsurg.steer.bundle import Bundle

CHECK_TEXTS = 16
CHECK_TOLERANCE = 1e-4


def build_monitor(
    model: ResolvedModel,
    bundle: Bundle,
    out: Path,
    overwrite: bool,
    placement: Placement,
    options: MonitorOptions = MonitorOptions(),
) -> MonitorSpec:
    """Learn, write and check the monitor of one recipe, or of a bundle's, in `out` (complete or not at all); the
    base is only read."""
    arch = model.arch
    monitor = arch.monitoring(model.name)
    packs = {}
    for member in bundle.members:
        member.recipe.check_model(model.config)
        packs[member.name] = Pack.load(member.recipe.spec.pack)
        require_data(packs[member.name], member.recipe.origin)
    refuse_existing(out, overwrite)
    tokenizer = _chat_tokenizer(model)
    placement.require("learning the monitor's probes", model.config)
    checkpoint = Checkpoint.open(model.path)
    dtype = weight_dtype(checkpoint, arch)
    hf = load_model(model.path, torch.float32, device=placement.device, max_memory=placement.dispatch)
    ensure_pad_token(tokenizer)
    trained = train(hf, tokenizer, monitor, bundle, packs, dtype, options)
    check_texts = _check_texts(packs, tokenizer)
    layer = trained.layer
    hooked = last_token_inputs(hf, tokenizer, monitor, check_texts, [layer], options.batch_size)[layer]
    del hf
    gc.collect()
    fingerprint = embeddings_sha256(checkpoint, arch)
    with building(out) as partial:
        progress.say(f"monitor: writing the classifier cut after layer {trained.layer}")
        write_classifier(partial, checkpoint, model.config, arch, trained, load_tokenizer(model.path))
        check = _check(partial, check_texts, hooked @ trained.head.T, options.batch_size)
        spec = _spec(model, bundle, list(packs.values()), trained, fingerprint, check)
        (partial / SPEC_NAME).write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
        write_card(partial, spec)
        write_sums(partial)
        if not check["passed"]:
            raise FinsurgError(
                f"the written monitor differs from its probes on the hooked base by {check['max_abs_diff']:.2e} "
                f"(tolerance {CHECK_TOLERANCE:g}); nothing was written"
            )
    return spec


def _chat_tokenizer(model: ResolvedModel):
    tokenizer = load_tokenizer(model.path)
    if not getattr(tokenizer, "chat_template", None):
        raise FinsurgError(
            f"{model.name}: its tokenizer has no chat template, and the monitor scores conversations as the "
            "template renders them"
        )
    return tokenizer


def _spec(
    model: ResolvedModel, bundle: Bundle, packs: list[Pack], trained, fingerprint: str, check: dict
) -> MonitorSpec:
    return MonitorSpec(
        labels=trained.labels,
        thresholds=trained.thresholds,
        layer=trained.layer,
        base={
            "name": model.name,
            "architecture": model.architecture,
            "num_hidden_layers": model.num_layers,
            "embeddings_sha256": fingerprint,
        },
        recipe=", ".join(member.recipe.origin for member in bundle.members),
        pack=", ".join(pack.source for pack in packs),
        disclaimer=joined_disclaimers(pack.disclaimer for pack in packs),
        topic_source=trained.topic_source,
        layers=trained.layers,
        tune=trained.tune,
        heldout=trained.heldout,
        counts=trained.counts,
        check=check,
    )


def _check_texts(packs: dict[str, Pack], tokenizer) -> list[str]:
    """Held-out conversations of both sides of the first pack's first label (topic where there is one)."""
    heldout = labelled(next(iter(packs.values())), "heldout", tokenizer)
    on, off = heldout[heldout.labels[0]]
    half = CHECK_TEXTS // 2
    return on[:: max(1, len(on) // half)][:half] + off[:: max(1, len(off) // half)][:half]


def _check(directory: Path, texts: list[str], expected: torch.Tensor, batch_size: int) -> dict:
    """The checkpoint, loaded as any user would, against the probes on the hooked base."""
    classifier = TransformersClassifier(directory)
    got = torch.cat([classifier.logits(list(chunk)) for chunk in chunked(texts, batch_size)])
    difference = float((got - expected).abs().max())
    return {
        "texts": len(texts),
        "max_abs_diff": difference,
        "tolerance": CHECK_TOLERANCE,
        "passed": difference < CHECK_TOLERANCE,
        "compared": "AutoModelForSequenceClassification float32 vs the probes on the base's hooked MLP input",
    }
