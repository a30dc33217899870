"""Beyond Llama: each family's exact route (native biases, a scaled bias, an attention-output site,
or a rewrite to Llama), checked against hooks on the original architecture; families that have
no exact route are refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch

from finsurg.cli import main
from finsurg.models.source import resolve_model

from conftest import ROUTES, export_checked, make_family_model, tiny_recipe, tree_hashes


@pytest.mark.slow
@pytest.mark.parametrize("family", list(ROUTES))
def test_bake_is_exact(family, tmp_path):
    architecture, site = ROUTES[family]
    base = make_family_model(tmp_path / "base", family)
    recipe = tiny_recipe(tmp_path / "recipe", architecture=architecture, site=site)
    results = export_checked(resolve_model(str(base)), recipe, 3.0, tmp_path / "out")  # the input is unchanged
    for item in results:
        report = item["verification"]
        exact, proof = report["float32"], report["proof"]
        assert report["passed"] and proof["passed"], item["variant"]
        assert exact["kl_max"] < 1e-6 and exact["greedy_identical"] and exact["argmax_agreement"] == 1.0
        assert exact["prefix_layers_bit_identical"] and exact["prefix_layers_checked"] == 1
        assert exact["steering_effect"]["live"]
        surgery = json.loads((tmp_path / "out" / item["variant"] / "finsurg_surgery.json").read_text())
        assert surgery["site"] == site
    variant_config = json.loads((tmp_path / "out" / "steered" / "config.json").read_text())
    if family in ("qwen2", "mistral"):  # rewritten: said so in the record and the card, checked on the original
        assert variant_config["architectures"] == ["LlamaForCausalLM"] and variant_config["mlp_bias"]
        surgery = json.loads((tmp_path / "out" / "steered" / "finsurg_surgery.json").read_text())
        assert surgery["rewritten_as"] == "LlamaForCausalLM"
        assert surgery["base_model"]["architecture"] == architecture
        assert "LlamaForCausalLM" in (tmp_path / "out" / "steered" / "README.md").read_text()
    else:
        assert variant_config["architectures"] == [architecture]


def test_granite_bias_is_the_offset_over_the_residual_multiplier(tmp_path):
    from safetensors import safe_open

    base = make_family_model(tmp_path / "base", "granite")
    recipe = tiny_recipe(tmp_path / "recipe", architecture="GraniteForCausalLM")
    export_checked(resolve_model(str(base)), recipe, 3.0, tmp_path / "out", verify=False)
    offsets = recipe.offsets(3.0)
    variant = tmp_path / "out" / "steered"
    for shard in variant.glob("model-*.safetensors"):
        with safe_open(shard, "pt") as handle:
            if "model.layers.1.mlp.down_proj.bias" in handle.keys():
                bias = handle.get_tensor("model.layers.1.mlp.down_proj.bias")
    assert torch.allclose(bias.double() * 0.22, offsets[1].double(), atol=1e-6)


@pytest.mark.slow
def test_mistral_sliding_window_needs_the_context_cap(tmp_path, capsys):
    base = make_family_model(tmp_path / "base", "mistral", sliding_window=64)
    tiny_recipe(tmp_path / "recipe", architecture="MistralForCausalLM")
    args = ["export", "--model", str(base), "--recipe", str(tmp_path / "recipe"), "--out", str(tmp_path / "out")]
    before = tree_hashes(base)
    capsys.readouterr()
    assert main(args + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sliding window (64 tokens) is shorter than its context (128)" in err
    assert "--cap-context" in err and not (tmp_path / "out").exists() and tree_hashes(base) == before
    assert main(args + ["--quiet", "--cap-context", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["variants"][0]["verification"]
    assert report["passed"] and report["float32"]["kl_max"] < 1e-6 and report["float32"]["greedy_identical"]
    config = json.loads((tmp_path / "out" / "steered" / "config.json").read_text())
    assert config["max_position_embeddings"] == 64 and "sliding_window" not in config


@pytest.mark.parametrize("family", ["gemma2", "olmo2"])
def test_families_without_an_exact_route_are_refused(family, tmp_path, capsys):
    base = make_family_model(tmp_path / "base", family)
    capsys.readouterr()
    assert main(["export", "--model", str(base), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be baked exactly" in err
    assert "normalises each sublayer's output before it joins the residual stream" in err
    assert not (tmp_path / "out").exists()


def test_a_recipe_for_another_family_or_site_is_refused(tmp_path, capsys):
    llama = make_family_model(tmp_path / "llama", "llama")
    qwen3 = make_family_model(tmp_path / "qwen3", "qwen3")
    tiny_recipe(tmp_path / "attn", architecture="LlamaForCausalLM", site="attention_output")
    tiny_recipe(tmp_path / "qwen", architecture="Qwen3ForCausalLM", site="attention_output")
    capsys.readouterr()
    assert main(["export", "--model", str(llama), "--recipe", str(tmp_path / "attn"), "--quiet"]) == 2
    assert "can bake only its layer_output site" in capsys.readouterr().err
    assert main(["export", "--model", str(llama), "--recipe", str(tmp_path / "qwen"), "--quiet"]) == 2
    assert "attention_output site" in capsys.readouterr().err
    tiny_recipe(tmp_path / "llama-recipe", architecture="LlamaForCausalLM")
    assert main(["export", "--model", str(qwen3), "--recipe", str(tmp_path / "llama-recipe"), "--quiet"]) == 2
    assert "layer_output site" in capsys.readouterr().err
    mistral = make_family_model(tmp_path / "mistral", "mistral")  # same hidden size and depth, same site
    assert main(["export", "--model", str(mistral), "--recipe", str(tmp_path / "llama-recipe"), "--quiet"]) == 2
    assert "is for LlamaForCausalLM, but" in capsys.readouterr().err


@pytest.mark.slow
def test_analysis_measures_at_qwen3s_attention_site_and_the_recipe_bakes(tmp_path, capsys):
    base = make_family_model(tmp_path / "base", "qwen3")
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["analyze", "--model", str(base), "--out", str(run), "--trials", "2", "--quiet"]) == 0
    recipe = json.loads((run / "recipe.json").read_text())
    assert recipe["site"] == "attention_output" and recipe["model"]["architecture"] == "Qwen3ForCausalLM"
    capsys.readouterr()
    code = main(
        ["export", "--model", str(base), "--recipe", str(run), "--out", str(tmp_path / "out"), "--json", "--quiet"]
    )
    assert code == 0
    for item in json.loads(capsys.readouterr().out)["variants"]:
        assert item["verification"]["passed"] and item["verification"]["float32"]["kl_max"] < 1e-6
