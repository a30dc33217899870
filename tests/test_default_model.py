"""The pipeline on the embedded SmolLM2-135M-Instruct, where realism matters."""

import json

import pytest
import torch
from huggingface_hub import ModelCard

from finsurg.analysis.surgery import run_surgery
from finsurg.steer.recipe import Recipe, resolve_recipe

from conftest import tree_hashes

pytestmark = pytest.mark.default_model


def test_default_model_is_the_embedded_smollm2(default_model):
    assert default_model.source == "alias"
    assert default_model.hidden_size == 576 and default_model.num_layers == 30
    assert default_model.config["tie_word_embeddings"] is True


def test_hook_surgery_changes_only_layers_from_the_first_steered_one(default_model):
    recipe = resolve_recipe(None, default_model.name, default_model.config)
    results = run_surgery(default_model, recipe, 3.0, new_tokens=12)
    lensed = results["logit_lens"]
    first = min(recipe.layers)
    assert lensed["unchanged_before_first_steered_layer"]
    for group in ("investment", "caution"):
        assert lensed["before"][group][:first] == lensed["after"][group][:first]
        assert lensed["before"][group][first:] != lensed["after"][group][first:]
    assert any(item["before"] != item["after"] for item in results["generations"])
    assert "Not financial advice" in results["disclaimer"]


def test_default_model_export_is_exact(default_model, default_export):
    assert tree_hashes(default_model.path) == default_export["base_hashes_before"]
    for result in default_export["results"]:
        exact = result["verification"]["float32"]
        assert exact["kl_max"] < 1e-6 and exact["greedy_identical"] and exact["prefix_layers_within_noise"]
        assert exact["prefix_layers_max_abs_diff"] < 1e-3  # the graft's zero neurons: float32 rounding at most
        assert exact["steering_effect"]["live"] and exact["steering_effect"]["kl_base_vs_hooked_mean"] > 1e-3
        variant = default_export["dir"] / result["variant"]
        config = json.loads((variant / "config.json").read_text())
        assert config["mlp_bias"] is True and config["tie_word_embeddings"] is True
        card = ModelCard.load(variant / "README.md")
        assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"


def test_analysis_finds_a_dial_that_keeps_coherence(default_model, tmp_path):
    from finsurg.analysis.analyze import analyze
    from finsurg.analysis.options import AnalysisOptions

    options = AnalysisOptions(out=tmp_path / "run", sweep_alphas=[-3.0, 0.0, 3.0], tune=False)
    results = analyze(default_model, options).results
    assert "507" in results["massive_dims"]  # SmolLM2's attention sink is flagged, not chosen
    assert all(n["index"] not in map(int, results["massive_dims"]) for n in results["recipe"]["neurons"])
    rows = {row["alpha"]: row for row in results["sweep"]["rows"]}
    assert rows[3.0]["log_odds"] > rows[0.0]["log_odds"] > rows[-3.0]["log_odds"]
    assert rows[3.0]["preference"] > rows[0.0]["preference"] > rows[-3.0]["preference"]
    for alpha in (-3.0, 3.0):
        assert abs(rows[alpha]["perplexity_change"]) < 0.10
    assert results["logit_lens"]["unchanged_before_first_steered_layer"]
    # the shipped seed preset is this analysis's output (--no-tune), not a hand-made stand-in
    shipped = Recipe.preset("smollm2-135m-seed")
    derived = Recipe.load(tmp_path / "run")
    assert shipped.layers == derived.layers
    assert [n.index for n in shipped.spec.neurons] == [n.index for n in derived.spec.neurons]
    for layer in shipped.layers:
        assert torch.allclose(shipped.offsets(3.0)[layer], derived.offsets(3.0)[layer], rtol=1e-3, atol=1e-5)
