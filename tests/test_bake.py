"""The bake as a pure function: recipe, alpha, names and dtype in, bias tensors out; no files."""

import torch

from finsurg.bake.bake import bake
from finsurg.steer.arch import by_name
from finsurg.steer.recipe import Recipe, RecipeSpec

LLAMA = by_name("LlamaForCausalLM")
CONFIG = {"num_hidden_layers": 3, "hidden_size": 8, "intermediate_size": 12}


def _recipe() -> Recipe:
    spec = RecipeSpec.model_validate(
        {
            "format": "finsurg.recipe/1",
            "model": {"architecture": "LlamaForCausalLM", "hidden_size": 8, "num_hidden_layers": 3},
            "layers": [1, 2],
            "neurons": [{"index": 3, "coefficient": -0.5}, {"index": 6, "coefficient": 0.25}],
            "steering": {"file": "steering_vectors.safetensors", "coefficient": 0.1},
        }
    )
    generator = torch.Generator().manual_seed(0)
    return Recipe(spec, {1: torch.randn(8, generator=generator), 2: torch.randn(8, generator=generator)})


def _expected_offset(recipe: Recipe, layer: int, alpha: float) -> torch.Tensor:
    unit = torch.zeros(8, dtype=torch.float64)
    unit[3], unit[6] = -0.5, 0.25
    return alpha * (unit + 0.1 * recipe.vectors[layer].double())


def test_bake_writes_every_bias_with_the_offset_where_it_steers():
    recipe = _recipe()
    biases = bake(recipe.surgery(3.0), LLAMA, CONFIG, torch.float32, existing={})
    expected_names = {
        f"model.layers.{layer}.mlp.{proj}.bias" for layer in range(3) for proj in ("gate_proj", "up_proj", "down_proj")
    }
    assert set(biases) == expected_names
    for layer in range(3):
        down = biases[f"model.layers.{layer}.mlp.down_proj.bias"]
        want = _expected_offset(recipe, layer, 3.0).float() if layer in (1, 2) else torch.zeros(8)
        assert down.dtype == torch.float32 and torch.allclose(down, want, atol=1e-7)
        assert torch.equal(biases[f"model.layers.{layer}.mlp.gate_proj.bias"], torch.zeros(12))


def test_bake_adds_to_existing_biases_and_leaves_the_rest_out():
    recipe = _recipe()
    existing = {
        f"model.layers.{layer}.mlp.{proj}.bias": torch.full((12 if proj != "down_proj" else 8,), 0.5)
        for layer in range(3)
        for proj in ("gate_proj", "up_proj", "down_proj")
    }
    biases = bake(recipe.surgery(-2.0), LLAMA, CONFIG, torch.bfloat16, existing=existing)
    assert set(biases) == {"model.layers.1.mlp.down_proj.bias", "model.layers.2.mlp.down_proj.bias"}
    for layer in (1, 2):
        got = biases[f"model.layers.{layer}.mlp.down_proj.bias"]
        want = (0.5 + _expected_offset(recipe, layer, -2.0).to(torch.bfloat16).double()).to(torch.bfloat16)
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_bake_is_linear_in_alpha():
    recipe = _recipe()
    one = bake(recipe.surgery(1.0), LLAMA, CONFIG, torch.float64, existing={})
    minus_three = bake(recipe.surgery(-3.0), LLAMA, CONFIG, torch.float64, existing={})
    for name in one:
        assert torch.allclose(minus_three[name], -3.0 * one[name], atol=1e-6)
