"""The conditional route in analysis, on a tiny model: the topic condition learnt from the pack, the route chosen
by measurement on tune, both routes reported on held-out, and the conditional recipe baked exactly."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from test_behaviour import write_pack

from finsurg.analysis import topic_probes
from finsurg.analysis.conditional_search import Point, winner
from finsurg.analysis.generations import judge, unchanged
from finsurg.analysis.judged_objective import Reading
from finsurg.cli import main
from finsurg.models.source import resolve_model
from finsurg.packs import GenerationRules
from finsurg.steer.recipe import Recipe

from conftest import export_checked, tree_hashes

OFF_TOPIC = [
    ("is the sea blue", "the sea is blue and big"),
    ("what is a cat", "a cat can run and eat"),
    ("what is paris", "paris is a city in france"),
    ("is the sun red", "the sun is red at time"),
    ("what is a dog", "a dog can walk and run"),
    ("is a tree green", "a tree is green and big"),
    ("what can a cat eat", "a cat can eat and drink water"),
    ("is the house big", "the house is big and red"),
    ("what is the sea", "the sea is water , blue and big"),
    ("can a dog drink", "a dog can drink water"),
    ("is paris a city", "paris is a big city in france"),
    ("what is green", "a tree is green"),
]


def write_conditional_pack(directory):
    write_pack(directory)
    items = [{"question": q, "reply": r} for q, r in OFF_TOPIC]
    json.dump({"train": items[:6], "tune": items[6:9], "heldout": items[9:]}, (directory / "off_topic.json").open("w"))
    json.dump(
        {
            "tune": ["a stock is a share of a fund", "a bond is money you can sell"],
            "heldout": ["a fund can buy stocks"],
        },
        (directory / "topic_prose.json").open("w"),
    )
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest |= {
        "off_topic": "off_topic.json",
        "topic_prose": "topic_prose.json",
        "generation_rules": {
            "positive": [r"\bbuy\b"],
            "negative": [r"\bconsult"],
            "positive_label": "says buy",
            "negative_label": "says consult",
        },
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_probe_and_auroc_match_independent_computations():
    generator = torch.Generator().manual_seed(0)
    axis = torch.randn(16, generator=generator)
    on = torch.randn(300, 16, generator=generator) + 0.8 * axis
    off = torch.randn(300, 16, generator=generator) - 0.8 * axis
    probe = topic_probes.fit(on, off, seed=0)
    assert float(probe.direction @ axis / axis.norm()) > 0.9  # the planted axis
    on_logits, off_logits = probe.logits(on), probe.logits(off)
    pairs = (on_logits[:, None] > off_logits[None, :]).double().mean()  # AUROC as P(on scores above off)
    assert topic_probes.auroc(on_logits, off_logits) == pytest.approx(float(pairs), abs=1e-9)
    threshold, slope = probe.gate(shift=1.0, sharpness=2.0)
    gate = probe.as_gate(1.0, 2.0)
    x = on[:5]
    assert torch.allclose(gate.score(x).double(), 2.0 * (probe.logits(x).double() - 1.0), atol=1e-4)
    assert slope == pytest.approx(2.0 * probe.scale)


def test_shared_prefix_and_conversation_means():
    assert topic_probes.shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert topic_probes.shared_prefix([[7, 8], [7, 8]]) == 1  # never the whole of the shortest
    means = topic_probes.conversation_means(torch.tensor([1.0, 3.0, 10.0]), torch.tensor([0, 0, 1]))
    assert means.tolist() == [2.0, 10.0]


def test_generation_judgement_and_unchanged_share():
    rules = GenerationRules(positive=[r"\bbuy\b"], negative=[r"\bconsult"])
    assert judge(["Buy the fund.", "Please CONSULT someone.", "nothing"], rules).model_dump() == {
        "positive": pytest.approx(1 / 3),
        "negative": pytest.approx(1 / 3),
    }
    assert unchanged([[1, 2, 3], [1, 2, 3]], [[1, 2, 3], [1, 2, 4]], tokens=3) == 0.5
    assert unchanged([[1, 2, 3]], [[1, 2, 4]], tokens=2) == 1.0


def test_the_winner_ranks_judged_shares_only_beyond_their_standard_error():
    budgets = (1e-4, 0.35)

    def point(number, steered, conservative, shift, kl=0.0, repeated=0.01):
        reading = Reading(steered, conservative, repeated, 0.9, questions=30)
        return Point("conditional", number, [3], 0.1, kl, 0.1, shift, -shift, reading=reading, keeps_answers=True)

    nearly_shut = point(0, 12 / 30, 11 / 30, 1.3)
    open_gate = point(1, 10 / 30, 13 / 30, 6.1)  # one question behind: within sqrt(p(1-p)/30) = 0.088
    far_behind = point(2, 7 / 30, 20 / 30, 9.0)  # four questions behind
    over_budget = point(3, 20 / 30, 20 / 30, 12.0, kl=1e-3)
    assert nearly_shut.noise == pytest.approx(math.sqrt((11 / 30) * (19 / 30) / 30))
    assert winner([nearly_shut, open_gate, far_behind, over_budget], budgets) is open_gate
    assert winner([nearly_shut, far_behind], budgets) is nearly_shut
    assert winner([over_budget], budgets) is None
    unjudged = [dataclasses.replace(p, reading=None) for p in (nearly_shut, open_gate)]
    assert all(p.noise == 0.0 for p in unjudged)
    assert winner(unjudged, budgets) is unjudged[1]


@pytest.mark.slow
def test_conditional_route_end_to_end(tiny_model, tmp_path, capsys, monkeypatch):
    pack = write_conditional_pack(tmp_path / "pack")
    answers = json.loads((pack / "answers.json").read_text())
    tune = {pair["question"] for pair in answers["tune"]}
    heldout = {pair["question"] for pair in answers["heldout"]}
    generated = _record_generations(monkeypatch)
    run = tmp_path / "run"
    args = ["analyze", "--model", str(tiny_model), "--behaviour", str(pack), "--out", str(run), "--quiet"]
    args += ["--trials", "3", "--gate-trials", "4", "--route", "conditional", "--prose-budget", "100"]
    args += ["--off-topic-budget", "10", "--samples", "2", "--dial", "1,3"]
    assert main(args) == 0
    # the search generates the tune questions and nothing else; held-out questions only once it has chosen
    searching = [set(questions) for phase, questions in generated if phase == "search"]
    assert searching and set().union(*searching) == tune
    assert not set().union(*[set(q) for phase, q in generated if phase == "before"]) & heldout
    assert heldout <= set().union(*[set(q) for phase, q in generated if phase == "after"])
    recipe = Recipe.load(run)
    assert recipe.conditional and recipe.spec.format == "finsurg.recipe/2"
    assert recipe.spec.tuning.route == "conditional" and recipe.spec.tuning.route_flag == "conditional"
    results = json.loads((run / "mech_interp_results.json").read_text())
    routes = results["behaviour"]["routes"]
    assert routes["chosen"] == "conditional" and len(routes["conditional_trials"]) == 4
    assert all(row["steered_positive"] is not None for row in routes["conditional_trials"])
    for row in routes["condition"]["heldout"].values():
        assert 0.0 <= row["token_auroc"] <= 1.0 and 0.0 <= row["conversation_auroc"] <= 1.0
    shares = routes["condition"]["open_shares"]
    assert shares["first_answer_tokens"] == pytest.approx(_first_tokens_open(tiny_model, recipe, answers), abs=0.05)
    longest = max(len(pair[side].split()) for pair in answers["heldout"] for side in ("positive", "negative"))
    assert 1 <= len(shares["by_answer_position"]) <= min(8, 2 * longest)
    heldout_rows = routes["heldout"]
    for route in ("unconditional", "conditional"):
        for name in ("steered", "conservative"):
            row = heldout_rows[route][name]
            assert 0.0 <= row["off_topic_unchanged"] <= 1.0 and row["off_topic_kl"] >= 0.0
            assert row["sampled"] is not None and row["quality"]["base_perplexity"] > 1.0
        assert [row["alpha"] for row in heldout_rows["dial"][route]] == [-3.0, -1.0, 1.0, 3.0]
    report = (run / "report.md").read_text()
    assert "Routes: an offset everywhere" in report
    assert report.index("What users see") < report.index("Held-out effects of the recipe")
    assert "| model | says buy | says consult |" in report  # the pack's own words for its rules
    results = export_checked(resolve_model(str(tiny_model)), recipe, 3.0, tmp_path / "out")
    for item in results:
        report = item["verification"]
        assert report["passed"] and report["float32"]["kl_max"] < 1e-6


def test_conditional_route_without_off_topic_data_is_refused(tiny_model, tmp_path, capsys):
    pack = write_pack(tmp_path / "pack")  # no off_topic.json
    before = tree_hashes(pack)
    args = ["analyze", "--model", str(tiny_model), "--behaviour", str(pack), "--out", str(tmp_path / "run")]
    capsys.readouterr()
    assert main(args + ["--route", "conditional", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no off-topic conversations" in err and "--route unconditional" in err
    assert not (tmp_path / "run").exists() and tree_hashes(pack) == before


def test_the_hooks_divide_grafted_offsets_as_the_bake_does(tmp_path):
    """Granite multiplies its MLP's output by residual_multiplier: an open gate's neurons must add offset / m
    there, so that the residual stream moves by the offset itself, as the baked neurons do."""
    from transformers import AutoModelForCausalLM

    from finsurg.steer.arch import by_name
    from finsurg.steer.graft import Gate
    from finsurg.steer.hooks import offsets_added
    from finsurg.steer.surgery import Surgery

    from conftest import make_family_model

    model = AutoModelForCausalLM.from_pretrained(make_family_model(tmp_path / "granite", "granite"))
    hidden = model.config.hidden_size
    gate = Gate(torch.zeros(hidden), 40.0)  # wide open at every position
    offset = torch.linspace(-1.0, 1.0, hidden)
    mlp = model.get_submodule("model.layers.1.mlp")
    normed = torch.randn(1, 3, hidden)
    with torch.no_grad():
        plain = mlp(normed)
        with offsets_added(model, Surgery.of({1: offset}, {1: gate}), by_name("GraniteForCausalLM")):
            hooked = mlp(normed)
    added = (hooked - plain) * model.config.residual_multiplier
    assert torch.allclose(added, offset.expand_as(added), atol=1e-4)


def _record_generations(monkeypatch) -> list[tuple[str, list[str]]]:
    """Every question list the analysis generates answers to, with the phase it was generated in."""
    from finsurg.analysis import context, route_choice

    calls, phase = [], ["before"]

    def recorded(model, tokenizer, arch, questions, *args, **kwargs):
        calls.append((phase[0], list(questions)))
        return greedy(model, tokenizer, arch, questions, *args, **kwargs)

    def during(name, function):
        def wrapped(*args, **kwargs):
            phase[0] = name
            try:
                return function(*args, **kwargs)
            finally:
                phase[0] = "after"

        return wrapped

    greedy = context.greedy_answers
    monkeypatch.setattr(context, "greedy_answers", recorded)
    monkeypatch.setattr(route_choice, "_search", during("search", route_choice._search))
    return calls


def _first_tokens_open(model_dir, recipe: Recipe, answers: dict) -> float:
    """The recipe's gates on the first 8 answer tokens of each held-out conversation, one conversation at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finsurg.models.loading import prompt_ids

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    gates = recipe.gates()
    opened = []
    for pair in answers["heldout"]:
        for answer in (pair["positive"], pair["negative"]):
            prompt = prompt_ids(tokenizer, pair["question"])
            first = tokenizer.encode(answer, add_special_tokens=False)[:8]
            seen = _mlp_inputs_alone(model, list(gates), prompt + first)
            for layer, gate in gates.items():
                opened += (gate.opening(seen[layer][len(prompt) :]) > 0.5).double().tolist()
    return sum(opened) / len(opened)


def _mlp_inputs_alone(model, layers: list[int], ids: list[int]) -> dict[int, torch.Tensor]:
    """Each layer's MLP input at every token of one unpadded sequence."""
    from finsurg.steer.arch import for_config

    route = for_config(model.config.to_dict()).grafting("test")
    seen = {}
    handles = [
        model.get_submodule(route.mlp.format(layer=layer)).register_forward_pre_hook(
            lambda module, args, layer=layer: seen.__setitem__(layer, args[0][0])
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_the_condition_learns_from_the_assistants_turn(tiny_model, tmp_path):
    """The probes' positives are every train answer's tokens and the prompt's last token (whose output is the
    answer's first token); the question's tokens are not among them."""
    from finsurg.analysis.batching import ensure_pad_token
    from finsurg.analysis.context import AnalysisContext
    from finsurg.analysis.route_choice import _probe_tokens
    from finsurg.models.loading import load_model, load_tokenizer, prompt_ids
    from finsurg.packs import Pack

    pack = Pack.load(write_conditional_pack(tmp_path / "pack"))
    resolved = resolve_model(str(tiny_model))
    model, tokenizer = load_model(resolved.path), ensure_pad_token(load_tokenizer(resolved.path))
    tokens = _probe_tokens(AnalysisContext(model, tokenizer, resolved.arch, pack), pack.off_topic_splits(), [1, 2])
    for layer in (1, 2):
        expected = []
        for pair in pack.answer_pairs().train:
            for answer in (pair.positive, pair.negative):
                prompt = prompt_ids(tokenizer, pair.question)
                ids = prompt + tokenizer.encode(answer, add_special_tokens=False)
                expected.append(_mlp_inputs_alone(model, [layer], ids)[layer][len(prompt) - 1 :])
        expected = torch.cat(expected)
        assert tokens.train_on.features[layer].shape == expected.shape
        assert torch.allclose(tokens.train_on.features[layer].float(), expected, atol=2e-2), layer
