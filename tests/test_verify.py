"""verify must catch the failures that would make a variant serve something other than the hooks."""

import json

import pytest
from safetensors.torch import load_file, save_file

from conftest import export_checked, tiny_recipe
from finsurg.errors import FinsurgError
from finsurg.exporter.verify import verify_variant
from finsurg.hashing import write_sums
from finsurg.model_source import resolve_model


@pytest.fixture
def variant(tmp_path, tiny_model):
    recipe = tiny_recipe(tmp_path / "recipe", scale=4.0)
    export_checked(resolve_model(str(tiny_model)), recipe, 3.0, tmp_path / "out", verify=False)
    return tmp_path / "out" / "steered"


def test_clean_variant_passes(variant):
    report = verify_variant(variant, progress=False)
    assert report["passed"]
    assert json.loads((variant / "verification.json").read_text()) == report


def test_biases_dropped_by_config_are_caught(variant):
    config = json.loads((variant / "config.json").read_text())
    config["mlp_bias"] = False
    (variant / "config.json").write_text(json.dumps(config))
    write_sums(variant)
    report = verify_variant(variant, progress=False)
    assert not report["passed"]
    assert not report["float32"]["steering_effect"]["live"]
    assert report["float32"]["kl_max"] > 1e-6


def test_wrong_bias_is_caught(variant):
    shard = variant / "model-00002-of-00002.safetensors"
    tensors = load_file(shard)
    tensors["model.layers.1.mlp.down_proj.bias"] *= 1.5
    save_file(tensors, shard, metadata={"format": "pt"})
    write_sums(variant)
    report = verify_variant(variant, progress=False)
    assert not report["passed"] and report["float32"]["kl_max"] > 1e-6


def test_tampered_file_fails_checksums(variant):
    (variant / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FinsurgError, match="tokenizer_config.json does not match"):
        verify_variant(variant, progress=False)


def test_wrong_base_is_refused(variant, tmp_path):
    from conftest import make_tiny_llama

    other = make_tiny_llama(tmp_path / "other", seed=3)
    with pytest.raises(FinsurgError, match="is not the base this variant was made from"):
        verify_variant(variant, base_override=other, progress=False)
