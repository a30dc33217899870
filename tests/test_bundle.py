"""A bundle: several gated recipes baked into one variant, exact against the hooks of all of them together, every
behaviour recorded with its gate, and conflicting recipes refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from finsurg.cli import main
from finsurg.packs import Pack
from finsurg.steer.bundle_report import OFF_TOPIC_UNCHANGED, SHIFT_KEPT
from finsurg.steer.graft import ALIGN, Gate
from finsurg.steer.hooks import offsets_added
from finsurg.steer.surgery import Steer, Surgery

from conftest import make_family_model, make_tiny_llama, tiny_recipe, tree_hashes, with_template

FAMILIES = {"llama": "LlamaForCausalLM", "granite": "GraniteForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _recipes(tmp_path, architecture: str):
    finance = tiny_recipe(tmp_path / "finance", architecture=architecture, conditional=True, layers=(1, 2))
    medical = tiny_recipe(
        tmp_path / "medical", architecture=architecture, conditional=True, layers=(2, 3), pack="medical", seed=11
    )
    return finance, medical


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits[0].double()


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_two_behaviour_bundle_equals_the_hooks_of_both(family, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    base = make_family_model(tmp_path / "base", family)
    finance, medical = _recipes(tmp_path, FAMILIES[family])
    inputs = [tree_hashes(path) for path in (base, tmp_path / "finance", tmp_path / "medical")]
    out = tmp_path / "out"
    crosstalk = [] if family == "llama" else ["--no-crosstalk"]  # measured once: it does not depend on the family
    status = main(
        ["export", "--model", str(base), "--recipe", str(tmp_path / "finance"), "--recipe", str(tmp_path / "medical")]
        + ["--alpha", "finance=-3,medical=2", "--out", str(out), "--json", "--quiet", *crosstalk]
    )
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    assert [tree_hashes(path) for path in (base, tmp_path / "finance", tmp_path / "medical")] == inputs
    names = {"finance-conservative_medical-steered": (-3.0, 2.0), "finance-steered_medical-conservative": (3.0, -2.0)}
    assert sorted(v["variant"] for v in printed["variants"]) == sorted(names)
    ids = torch.tensor([[1, 5, 9, 12, 7, 3, 20, 4, 11, 6]])
    prompts = sum(len(Pack.load(name).verification_prompts()) for name in ("finance", "medical"))
    plain = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()
    for item in printed["variants"]:
        a, b = names[item["variant"]]
        assert item["alphas"] == {"finance": a, "medical": b}
        report = item["verification"]
        assert report["passed"] and report["proof"]["passed"] and report["float32"]["kl_max"] < 1e-6
        assert report["prompts"] == prompts  # every behaviour's verification prompts
        directory = out / item["variant"]
        record = json.loads((directory / "finsurg_surgery.json").read_text())
        assert [(x["name"], x["alpha"]) for x in record["bundle"]] == [("finance", a), ("medical", b)]
        assert [x["recipe"]["layers"] for x in record["bundle"]] == [[1, 2], [2, 3]]
        assert all(x["recipe"]["condition"] is not None for x in record["bundle"])
        with safe_open(directory / "finsurg_offsets.safetensors", "pt") as handle:
            labels = json.loads(handle.metadata()["behaviours"])
            keys = set(handle.keys())
        assert keys == {name for key in labels for name in (f"offset.{key}", f"gate.{key}.weight", f"gate.{key}.bias")}
        assert labels == {"1": "finance", "2": "finance", "2.1": "medical", "3": "medical"}
        config = json.loads((directory / "config.json").read_text())
        assert config["intermediate_size"] == 96 + ALIGN  # 4 gate neurons at layer 2 fit in one block
        # independently of the offsets file: both recipes' hooks on the base, from the recipes themselves
        both = Surgery.joined([finance.surgery(a), medical.surgery(b)])
        with offsets_added(plain, both, plain_arch(base)):
            hooked = _logits(plain, ids)
        with offsets_added(plain, finance.surgery(a), plain_arch(base)):
            one = _logits(plain, ids)
        baked = _logits(AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval(), ids)
        assert float((baked - hooked).abs().max()) < 1e-4
        assert float((baked - one).abs().max()) > 1e-3  # the second behaviour is there
        card = (directory / "README.md").read_text()
        assert "## Behaviours in this bundle" in card and "| medical |" in card
        assert ("### Cross-talk" in card) == (family == "llama")
    if family == "llama":
        _check_crosstalk(printed["crosstalk"], base, finance, medical)


def _margin(model, tokenizer, question: str, answer: str) -> float:
    """log P(answer | question), one unpadded forward pass."""
    from finsurg.models.loading import prompt_ids

    context = prompt_ids(tokenizer, question)
    continuation = tokenizer.encode(answer, add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([context + continuation])).logits[0].double().log_softmax(-1)
    return float(sum(logits[len(context) - 1 + i, token] for i, token in enumerate(continuation)))


def _check_crosstalk(report, base, finance, medical):
    """The report's shifts recomputed one pair at a time, and its table complete."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    arch = plain_arch(base)
    side = next(s for s in report["sides"] if s["variant"] == "finance-conservative_medical-steered")
    row = next(r for r in side["behaviours"] if r["behaviour"] == "medical")
    pairs = Pack.load("medical").answer_pairs().heldout
    both = Surgery.joined([finance.surgery(-3.0).labelled("finance"), medical.surgery(2.0).labelled("medical")])

    def mean_shift(surgery):
        total = 0.0
        for pair in pairs:
            plain = _margin(model, tokenizer, pair.question, pair.positive) - _margin(
                model, tokenizer, pair.question, pair.negative
            )
            with offsets_added(model, surgery, arch):
                steered = _margin(model, tokenizer, pair.question, pair.positive) - _margin(
                    model, tokenizer, pair.question, pair.negative
                )
            total += steered - plain
        return total / len(pairs)

    assert row["pairs"] == len(pairs)
    assert row["shift_alone"] == pytest.approx(mean_shift(medical.surgery(2.0)), abs=1e-3)
    assert row["shift_in_bundle"] == pytest.approx(mean_shift(both), abs=1e-3)
    assert row["shift_kept"] == pytest.approx(row["shift_in_bundle"] / row["shift_alone"])
    assert set(report["gates"]) == {"finance", "medical"}
    assert all(set(opens) == {"finance", "medical", "off-topic"} for opens in report["gates"].values())
    assert 0 < side["off_topic_questions"] and 0 <= side["off_topic_unchanged"] <= 1


def plain_arch(path):
    from finsurg.models.source import resolve_model

    return resolve_model(str(path)).arch


def test_a_layer_grows_by_one_block_for_16_gates_and_by_two_past_them():
    gate = Gate(torch.ones(8), 0.0)

    def width(count: int) -> int:
        return Surgery(tuple(Steer(3, torch.ones(8), gate, f"b{k}") for k in range(count))).graft_width()

    assert (width(1), width(16), width(17)) == (ALIGN, ALIGN, 2 * ALIGN)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("same topic", "are both recipes for finance"),
        ("other base", "were made on different base models"),
        ("unknown name", "--alpha names 'legal'"),
    ],
)
def test_conflicting_bundles_are_refused_in_one_line(case, expected, tmp_path, tiny_model, capsys):
    first = tiny_recipe(tmp_path / "a", conditional=True)
    second = {
        "same topic": lambda: tiny_recipe(tmp_path / "b", conditional=True, seed=3),
        "other base": lambda: tiny_recipe(tmp_path / "b", conditional=True, pack="medical", seed=3),
        "unknown name": lambda: tiny_recipe(tmp_path / "b", conditional=True, pack="medical", seed=3),
    }[case]()
    del first, second
    if case == "other base":  # same shapes, weights that hash differently
        for name, digest in (("a", "1"), ("b", "2")):
            path = tmp_path / name / "recipe.json"
            raw = json.loads(path.read_text())
            raw["model"]["weights_sha256"] = digest * 64
            path.write_text(json.dumps(raw))
    alpha = "legal=2" if case == "unknown name" else "3"
    status = main(
        ["export", "--model", str(tiny_model), "--recipe", str(tmp_path / "a"), "--recipe", str(tmp_path / "b")]
        + ["--alpha", alpha, "--out", str(tmp_path / "out"), "--quiet"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_bundle_has_one_monitor_with_a_topic_and_a_behaviour_label_per_pack(tmp_path):
    from transformers import AutoTokenizer

    from finsurg.analysis.topic_probes import auroc
    from finsurg.devices import Placement
    from finsurg.models.source import resolve_model
    from finsurg.monitor.build import build_monitor
    from finsurg.monitor.classifier import TransformersClassifier
    from finsurg.monitor.labelled import bundle_labelled
    from finsurg.steer.bundle import Bundle

    base = with_template(make_tiny_llama(tmp_path / "chat"))
    finance, medical = _recipes(tmp_path, "LlamaForCausalLM")
    bundle = Bundle.of([finance, medical])
    spec = build_monitor(resolve_model(str(base)), bundle, tmp_path / "monitor", False, Placement.of("cpu", "float32"))
    labels = ["finance_topic", "finance_behaviour", "medical_topic", "medical_behaviour"]
    assert spec.labels == labels and spec.check["passed"] and spec.topic_source == "fitted"
    assert "Not financial advice" in spec.disclaimer and "Not medical advice" in spec.disclaimer
    packs = {"finance": Pack.load("finance"), "medical": Pack.load("medical")}
    heldout = bundle_labelled(packs, "heldout", AutoTokenizer.from_pretrained(tmp_path / "monitor"))
    medical_texts = set(heldout["medical_topic"][0])
    assert medical_texts <= set(heldout["finance_topic"][1])  # one pack's conversations are off the other's topic
    classifier = TransformersClassifier(tmp_path / "monitor")
    for index, label in enumerate(labels):  # held-out AUROC recomputed through the stock checkpoint
        positive, negative = heldout[label]
        texts = positive + negative
        logits = torch.cat([classifier.logits(texts[i : i + 32]) for i in range(0, len(texts), 32)])[:, index]
        measured = auroc(logits[: len(positive)], logits[len(positive) :])
        # the tiny vocabulary renders many texts alike: float32 noise between batchings reorders near-ties
        assert measured == pytest.approx(spec.heldout[label].auroc, abs=2e-3), label
    card = (tmp_path / "monitor" / "README.md").read_text()
    assert "`medical_behaviour`" in card and "the medical pack's" in card


def test_vllm_serves_a_bundle_token_for_token(tmp_path, vllm_python, capsys):
    from test_vllm import verify_vllm

    from finsurg.export import export_variants
    from finsurg.models.source import resolve_model
    from finsurg.settings import ExportOptions
    from finsurg.steer.bundle import Bundle

    base = make_family_model(tmp_path / "base", "llama")
    bundle = Bundle.of(list(_recipes(tmp_path, "LlamaForCausalLM")), {"finance": -3.0, "medical": 2.0})
    export_variants(resolve_model(str(base)), bundle, ExportOptions(out=tmp_path / "out", verify=False))
    code, err, report = verify_vllm(tmp_path / "out" / "finance-conservative_medical-steered", vllm_python, capsys)
    assert code == 0 and report["passed"], err
    assert report["vs_hooks"]["identical"] and report["vs_transformers"]["identical"]


def test_the_offsets_file_keeps_each_steers_behaviour():
    gate = Gate(torch.ones(8), -1.0)
    surgery = Surgery.joined(
        [
            Surgery((Steer(2, torch.ones(8), gate), Steer(4, torch.full((8,), 2.0)))).labelled("finance"),
            Surgery((Steer(2, -torch.ones(8), gate),)).labelled("medical"),
        ]
    )
    assert [(s.layer, s.behaviour) for s in surgery.steers] == [(2, "finance"), (2, "medical"), (4, "finance")]
    again = Surgery.from_tensors(surgery.tensors(), surgery.metadata())
    assert again.same_as(surgery)
    assert not Surgery.from_tensors(surgery.tensors()).same_as(surgery)  # the labels live in the metadata


@pytest.fixture(scope="module")
def default_bundle(default_model, tmp_path_factory):
    """The default model's finance and medical presets baked as one bundle, verified, its cross-talk measured, with
    its monitor."""
    from finsurg import api
    from finsurg.settings import ExportSettings

    out = tmp_path_factory.mktemp("bundle")
    settings = ExportSettings(recipe=["smollm2-135m", "smollm2-135m-medical"], out=out, monitor={}, quiet=True)
    return out, api.export(settings)


def test_the_default_model_bakes_finance_with_medical_and_keeps_each(default_bundle):
    out, outcome = default_bundle
    assert [v.variant for v in outcome.variants] == ["steered", "conservative"]
    for item in outcome.variants:
        assert item.verification.passed and item.verification.float32.kl_max < 1e-6
        sign = 1.0 if item.variant == "steered" else -1.0
        assert item.alphas == {"finance": 3.0 * sign, "medical": 1.0 * sign}  # each preset's default alpha
    report = outcome.crosstalk
    for side in report.sides:
        for row in side.behaviours:  # each behaviour's shift in the bundle against its recipe alone
            assert row.shift_alone * row.alpha > 0 and abs(row.shift_alone) > 1.0
            assert row.shift_kept >= SHIFT_KEPT, (side.variant, row)
            # target ANSWERS_SAME; finance's conservative answers are its own on 80% (the medical gate opens on 2%
            # of finance tokens)
            assert row.answers_same >= 0.75, (side.variant, row)
        assert side.off_topic_unchanged >= OFF_TOPIC_UNCHANGED, side.variant
    for gate, opens in report.gates.items():  # each gate opens on its own topic, barely on the other's, not off it
        other = next(name for name in report.gates if name != gate)
        assert opens[gate] > 0.3 and opens[other] < 0.05 and opens["off-topic"] < 0.01, gate
    card = (out / "steered" / "README.md").read_text()
    assert "### Cross-talk" in card and "Not medical advice" in card and "Not financial advice" in card


def test_the_default_bundle_has_one_monitor_for_both_behaviours(default_bundle):
    _, outcome = default_bundle
    spec = outcome.monitor.spec
    assert spec.labels == ["finance_topic", "finance_behaviour", "medical_topic", "medical_behaviour"]
    for label, row in spec.heldout.items():
        assert row.auroc >= (0.97 if label.endswith("_topic") else 0.95), (label, row)
    assert spec.check["passed"]


def test_llamacpp_serves_the_bundle(default_bundle, llamacpp_python, capsys, monkeypatch):
    monkeypatch.setenv("FINSURG_LLAMACPP_PYTHON", llamacpp_python)
    out, _ = default_bundle
    variant = out / "conservative"
    assert main(["gguf", str(variant), "--type", "f32", "--json", "--quiet"]) == 0
    capsys.readouterr()
    code = main(
        ["verify", str(variant), "--engine", "llama.cpp", "--llamacpp-python", llamacpp_python, "--json", "--quiet"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"]
    assert report["baked_vs_transformers"]["max_abs_logit_diff"] <= report["tolerance"]
    assert report["baked_vs_transformers"]["argmax_agreement"] >= report["noise_floor"]["argmax_agreement"] - 0.02
