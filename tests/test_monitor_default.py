"""The compliance monitor on the default model: its held-out figures recomputed through the stock classifier, a
planted drift caught end to end, and vLLM's pooling runner against transformers."""

import json

import pytest
import torch

from finsurg.analysis.topic_probes import auroc
from finsurg.devices import Placement
from finsurg.monitor.build import build_monitor
from finsurg.monitor.classifier import TransformersClassifier
from finsurg.monitor.labelled import labelled
from finsurg.monitor.synthetic import planted_log
from finsurg.packs import Pack
from finsurg.steer.bundle import Bundle
from finsurg.steer.recipe import resolve_recipe

from conftest import run_cli
from vllm_server import OpenAIServer

pytestmark = pytest.mark.default_model
TOPIC_TARGET, BEHAVIOUR_TARGET = 0.97, 0.95


@pytest.fixture(scope="module")
def default_monitor(default_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("default-monitor") / "monitor"
    recipe = resolve_recipe(None, default_model.name, default_model.config)
    spec = build_monitor(default_model, Bundle.single(recipe), out, False, Placement.of("cpu", "float32"))
    return out, spec, recipe


def classify(directory, texts, batch_size=16):
    classifier = TransformersClassifier(directory)
    return torch.cat(
        [classifier.logits(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
    )


def test_heldout_auroc_through_the_stock_classifier_meets_the_targets(default_monitor):
    directory, spec, recipe = default_monitor
    assert spec.topic_source == "condition" and spec.layer in recipe.layers  # one trained topic probe
    from transformers import AutoTokenizer

    heldout = labelled(Pack.load("finance"), "heldout", AutoTokenizer.from_pretrained(directory))
    for index, (label, target) in enumerate((("topic", TOPIC_TARGET), ("behaviour", BEHAVIOUR_TARGET))):
        positive, negative = heldout[label]
        logits = classify(directory, positive + negative)[:, index]
        measured = auroc(logits[: len(positive)], logits[len(positive) :])
        assert measured == pytest.approx(spec.heldout[label].auroc, abs=1e-6)
        assert measured >= target, (label, measured)
    assert spec.check["max_abs_diff"] < 1e-4
    assert spec.cost == (spec.layer + 1) / 30


def test_a_planted_shift_alarms_and_a_flat_log_does_not(default_monitor, tmp_path):
    directory = default_monitor[0]
    pack = Pack.load("finance")
    first = {}
    for name, after in (("planted", 0.30), ("flat", 0.10)):
        log = planted_log(tmp_path / f"{name}.jsonl", pack, 600, 0.10, after, seed=3)
        scored = run_cli("monitor", "score", "--quiet", "--monitor", str(directory), str(log))
        assert scored.returncode == 0, scored.stderr
        done = run_cli(
            "monitor",
            "drift",
            str(tmp_path / f"{name}.scores.jsonl"),
            "--window",
            "100",
            "--reference",
            "200",
            "--out",
            str(tmp_path / f"drift-{name}"),
            "--json",
        )
        assert done.returncode == 0, done.stderr
        alarms = [a for a in json.loads(done.stdout)["alarms"] if a["label"] == "behaviour"]
        first[name] = min((a["first_line"] for a in alarms), default=None)
    assert first["flat"] is None
    assert first["planted"] is not None and 301 <= first["planted"] <= 301 + 100  # within two windows


@pytest.mark.vllm
def test_vllm_pooling_runner_scores_like_transformers(default_monitor, vllm_python, tmp_path):
    directory = default_monitor[0]
    log = planted_log(tmp_path / "chats.jsonl", Pack.load("finance"), 24, 0.3, 0.3, seed=4)
    rows = {}
    for engine in ("transformers", "vllm"):
        out = tmp_path / f"{engine}.jsonl"
        done = run_cli(
            "monitor",
            "score",
            "--quiet",
            "--engine",
            engine,
            "--vllm-python",
            vllm_python,
            "--monitor",
            str(directory),
            str(log),
            "--out",
            str(out),
        )
        assert done.returncode == 0, done.stderr
        rows[engine] = [json.loads(line) for line in out.read_text().splitlines()]
    logits = {e: torch.tensor([[r["logits"]["topic"], r["logits"]["behaviour"]] for r in rows[e]]) for e in rows}
    assert float((logits["vllm"] - logits["transformers"]).abs().max()) < 1e-3
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    texts = [tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False) for line in open(log)][:8]
    with OpenAIServer(vllm_python, directory, tmp_path / "server.log", ("--runner", "pooling")) as server:
        probs = torch.tensor(server.classify(texts))
    assert server.stopped
    assert float((probs - torch.sigmoid(logits["transformers"][:8])).abs().max()) < 1e-3
