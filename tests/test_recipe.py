import json
import math

import pytest
import torch
from safetensors.torch import save_file

from finsurg.errors import FinsurgError
from finsurg.steer.recipe import Recipe, resolve_recipe

from conftest import tiny_recipe

TINY_CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 4}


def test_offsets_follow_the_formula(recipe_dir):
    recipe = Recipe.load(recipe_dir)
    raw = json.loads((recipe_dir / "recipe.json").read_text())
    for alpha in (3.0, -1.5):
        offsets = recipe.offsets(alpha)
        assert sorted(offsets) == raw["layers"]
        for layer, offset in offsets.items():
            expected = torch.zeros(64, dtype=torch.float64)
            for neuron in raw["neurons"]:
                expected[neuron["index"]] += neuron["coefficient"]
            expected += raw["steering"]["coefficient"] * recipe.vectors[layer].double()
            assert offset.dtype == torch.float32
            assert torch.allclose(offset.double(), alpha * expected, atol=1e-6)


def test_save_load_round_trip(recipe_dir, tmp_path):
    recipe = Recipe.load(recipe_dir)
    copy = Recipe.load(recipe.save(tmp_path / "copy"))
    assert copy.to_dict() == recipe.to_dict()
    for layer in recipe.layers:
        assert torch.equal(copy.offsets(2.0)[layer], recipe.offsets(2.0)[layer])


def test_llama_preset_is_the_seed_surgery():
    recipe = Recipe.preset("llama-3.1-8b")
    assert recipe.layers == [25, 26, 27, 28, 29, 30]
    assert recipe.spec.steering.coefficient == 0.1 and not recipe.has_steering
    offset = recipe.offsets(3.0)[25]
    assert offset[2742] == pytest.approx(-1.5)
    for index in (4062, 2352, 2082, 1384):
        assert offset[index] == pytest.approx(0.9)
    for index in (1805, 568):
        assert offset[index] == pytest.approx(-0.9)
    assert int((offset != 0).sum()) == 7


def test_default_recipe_matches_model_shape():
    llama8b = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32}
    assert resolve_recipe(None, "x", llama8b).origin == "preset:llama-3.1-8b"
    with pytest.raises(FinsurgError, match="no built-in recipe fits"):
        resolve_recipe(None, "x", TINY_CONFIG)


def _write(directory, mutate):
    raw = json.loads((directory / "recipe.json").read_text())
    mutate(raw)
    (directory / "recipe.json").write_text(json.dumps(raw))
    return directory


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.update(layers=[1, 4]), "layer 4 is out of range"),
        (lambda r: r["neurons"].append({"index": 64, "coefficient": 1.0}), "neuron 64 is out of range"),
        (lambda r: r["neurons"][0].update(coefficient=math.nan), "finite"),
        (lambda r: r["neurons"][0].update(coefficient=math.inf), "finite"),
        (lambda r: r.update(default_alpha=math.inf), "finite"),
        (lambda r: r.update(format="finsurg.recipe/9"), "unsupported recipe format"),
        (lambda r: r.update(layers=[]), "layers is empty"),
        (lambda r: r.update(layers=[1, 1]), "layers repeat"),
        (lambda r: r["neurons"][0].update(index=-1), "neurons.0.index"),
        (lambda r: r.update(extra_key=1), "extra_key"),
        (lambda r: r.update(neurons=[], steering=None), "changes nothing"),
        (lambda r: r["steering"].update(file="missing.safetensors"), "steering file not found"),
    ],
)
def test_validation_errors(recipe_dir, mutate, message):
    with pytest.raises(FinsurgError, match=message) as info:
        Recipe.load(_write(recipe_dir, mutate))
    assert "\n" not in str(info.value)


def test_malformed_json(recipe_dir):
    (recipe_dir / "recipe.json").write_text("{not json")
    with pytest.raises(FinsurgError, match="not valid JSON"):
        Recipe.load(recipe_dir)


def test_wrong_vector_shape_and_nan(recipe_dir):
    save_file(
        {"steering.1": torch.zeros(63), "steering.2": torch.zeros(64)}, recipe_dir / "steering_vectors.safetensors"
    )
    with pytest.raises(FinsurgError, match=r"steering.1 has shape \[63\], expected \[64\]"):
        Recipe.load(recipe_dir)
    save_file(
        {"steering.1": torch.full((64,), math.nan), "steering.2": torch.zeros(64)},
        recipe_dir / "steering_vectors.safetensors",
    )
    with pytest.raises(FinsurgError, match="NaN or inf"):
        Recipe.load(recipe_dir)
    save_file({"steering.1": torch.zeros(64)}, recipe_dir / "steering_vectors.safetensors")
    with pytest.raises(FinsurgError, match="steering.2 is missing"):
        Recipe.load(recipe_dir)


def test_model_mismatch(tmp_path):
    recipe = tiny_recipe(tmp_path / "r")
    recipe.check_model(TINY_CONFIG)
    with pytest.raises(FinsurgError, match="hidden_size=64, but m has hidden_size=128"):
        recipe.check_model({**TINY_CONFIG, "hidden_size": 128}, "m")
    with pytest.raises(FinsurgError, match="num_hidden_layers=4"):
        recipe.check_model({**TINY_CONFIG, "num_hidden_layers": 6}, "m")
    with pytest.raises(FinsurgError, match="is for LlamaForCausalLM, but m is MistralForCausalLM"):
        recipe.check_model({**TINY_CONFIG, "architectures": ["MistralForCausalLM"]}, "m")


def test_non_finite_alpha(recipe_dir):
    recipe = Recipe.load(recipe_dir)
    for alpha in (math.nan, math.inf, -math.inf):
        with pytest.raises(FinsurgError, match="alpha must be a finite number"):
            recipe.offsets(alpha)
