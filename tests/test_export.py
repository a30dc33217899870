"""Baked variants against an independent reference: plain PyTorch hooks on the unmodified base."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from finsurg.bake.writer import VariantWriter
from finsurg.errors import FinsurgError
from finsurg.io.hashing import check_sums
from finsurg.models.loading import load_model
from finsurg.models.source import resolve_model

from conftest import export_checked, make_tiny_llama, tiny_recipe, tree_hashes

PROMPTS = [[1, 20, 30, 40, 50, 60, 70], [1, 8, 9, 10, 11]]


def reference_logits(base_dir, offsets, ids):
    """Base model with torch forward hooks adding each offset after its decoder layer."""
    model = load_model(base_dir)

    def make(vector):
        def hook(module, inputs, output):
            if isinstance(output, tuple):
                return (output[0] + vector,) + output[1:]
            return output + vector

        return hook

    handles = [model.model.layers[layer].register_forward_hook(make(v)) for layer, v in offsets.items()]
    try:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0]
    finally:
        for handle in handles:
            handle.remove()


def baked_logits(variant_dir, ids):
    with torch.no_grad():
        return load_model(variant_dir)(torch.tensor([ids])).logits[0]


def check_variant_matches_hooks(base_dir, variant_dir, recipe, alpha):
    offsets = recipe.offsets(alpha)
    for ids in PROMPTS:
        ref, baked = reference_logits(base_dir, offsets, ids), baked_logits(variant_dir, ids)
        plain = baked_logits(base_dir, ids)
        assert (ref - baked).abs().max() < 1e-4
        assert (plain - baked).abs().max() > 1e-2  # the surgery did something


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout",
    [
        {"tie": True},
        {"tie": False},
        {"tie": True, "shard_size": "60KB"},
        {"tie": False, "mlp_bias": True},
    ],
    ids=["single-tied", "single-untied", "sharded", "existing-biases"],
)
def test_export_matches_hooks_and_leaves_input_alone(tmp_path, layout):
    base_dir = make_tiny_llama(tmp_path / "base", **layout)
    recipe = tiny_recipe(tmp_path / "recipe", scale=4.0)
    before = tree_hashes(base_dir)
    model = resolve_model(str(base_dir))
    results = export_checked(model, recipe, 3.0, tmp_path / "out")
    assert tree_hashes(base_dir) == before
    assert [r["variant"] for r in results] == ["steered", "conservative"]
    for result, alpha in zip(results, (3.0, -3.0)):
        variant = tmp_path / "out" / result["variant"]
        check_variant_matches_hooks(base_dir, variant, recipe, alpha)
        report = json.loads((variant / "verification.json").read_text())
        exact = report["float32"]
        assert report["passed"] and exact["kl_max"] < 1e-6 and exact["greedy_identical"]
        assert exact["prefix_layers_bit_identical"] and exact["steering_effect"]["live"]
        check_sums(variant)


def test_variant_layout(tmp_path):
    base_dir = make_tiny_llama(tmp_path / "base", shard_size="60KB")
    recipe = tiny_recipe(tmp_path / "recipe")
    model = resolve_model(str(base_dir))
    export_checked(model, recipe, 2.0, tmp_path / "out", verify=False)
    variant = tmp_path / "out" / "steered"
    config = json.loads((variant / "config.json").read_text())
    assert config["mlp_bias"] is True
    index = json.loads((variant / "model.safetensors.index.json").read_text())
    base_index = json.loads((base_dir / "model.safetensors.index.json").read_text())
    base_shards = len(set(base_index["weight_map"].values()))
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == base_shards + 1
    offsets = load_file(variant / "finsurg_offsets.safetensors")
    for layer in range(4):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            name = f"model.layers.{layer}.mlp.{proj}.bias"
            with safe_open(variant / index["weight_map"][name], "pt") as handle:
                bias = handle.get_tensor(name)
            if proj == "down_proj" and layer in (1, 2):
                assert torch.equal(bias, offsets[f"offset.{layer}"])
                assert torch.equal(bias, recipe.offsets(2.0)[layer])
            else:
                assert not bias.any()
    total = sum(handle_bytes for handle_bytes in _tensor_bytes(variant, index["weight_map"]))
    assert index["metadata"]["total_size"] == total
    surgery = json.loads((variant / "finsurg_surgery.json").read_text())
    assert surgery["base_model"]["path"] == str(base_dir.resolve())
    assert surgery["alpha"] == 2.0 and surgery["variant"] == "steered"
    assert set(surgery["base_model"]["files"]) == {p.name for p in base_dir.glob("*.safetensors")}


def _tensor_bytes(variant, weight_map):
    for name, shard in weight_map.items():
        with safe_open(variant / shard, "pt") as handle:
            tensor = handle.get_tensor(name)
        yield tensor.numel() * tensor.element_size()


def test_existing_biases_are_added_to(tmp_path):
    base_dir = make_tiny_llama(tmp_path / "base", mlp_bias=True)
    recipe = tiny_recipe(tmp_path / "recipe")
    base = load_model(base_dir)
    (tmp_path / "v").mkdir()
    VariantWriter(resolve_model(str(base_dir))).write(recipe.surgery(3.0), "steered", tmp_path / "v")
    variant = load_model(tmp_path / "v")
    for layer in range(4):
        old, new = base.model.layers[layer].mlp, variant.model.layers[layer].mlp
        shift = recipe.offsets(3.0).get(layer, torch.zeros(64))
        assert torch.allclose(new.down_proj.bias, old.down_proj.bias + shift, atol=1e-6)
        assert torch.equal(new.gate_proj.bias, old.gate_proj.bias)


@pytest.mark.slow
def test_deterministic(tmp_path, tiny_model, monkeypatch):
    """Two verified exports on machines with different free memory: every sealed file byte-identical."""
    import finsurg.checks.verify as verify_module

    recipe = tiny_recipe(tmp_path / "recipe")
    model = resolve_model(str(tiny_model))
    for name, free_gib in (("a", 7.3), ("b", 22.9)):
        monkeypatch.setattr(verify_module, "budget", lambda device, max_memory, free=free_gib: free * 2**30)
        results = export_checked(model, recipe, 3.0, tmp_path / name)
        assert all(r["verification"]["checks"][-1] == "end_to_end:in_memory" for r in results)
    for variant in ("steered", "conservative"):
        sums_a = (tmp_path / "a" / variant / "SHA256SUMS").read_text()
        assert sums_a == (tmp_path / "b" / variant / "SHA256SUMS").read_text()
        assert tree_hashes(tmp_path / "a" / variant) == tree_hashes(tmp_path / "b" / variant)


@pytest.mark.slow
def test_bfloat16_cast_reports_noise_floor(tmp_path, tiny_model):
    recipe = tiny_recipe(tmp_path / "recipe", scale=4.0)
    model = resolve_model(str(tiny_model))
    results = export_checked(model, recipe, 3.0, tmp_path / "out", dtype="bfloat16")
    variant = tmp_path / "out" / "steered"
    assert json.loads((variant / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = load_model(variant, torch.bfloat16)
    assert loaded.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    report = results[0]["verification"]
    assert report["passed"] and report["float32"]["kl_max"] < 1e-6
    low = report["export_dtype"]
    assert low["dtype"] == "bfloat16" and low["noise_floor"]["kl_mean"] > 0
    base_weight = load_model(tiny_model).model.layers[3].self_attn.q_proj.weight
    assert torch.equal(loaded.model.layers[3].self_attn.q_proj.weight, base_weight.to(torch.bfloat16))


def test_refuses_existing_output_and_overwrites_on_request(tmp_path, tiny_model):
    recipe = tiny_recipe(tmp_path / "recipe")
    model = resolve_model(str(tiny_model))
    export_checked(model, recipe, 1.0, tmp_path / "out", verify=False)
    first = tree_hashes(tmp_path / "out")
    with pytest.raises(FinsurgError, match="already exists; pass --overwrite"):
        export_checked(model, recipe, 2.0, tmp_path / "out", verify=False)
    assert tree_hashes(tmp_path / "out") == first
    export_checked(model, recipe, 2.0, tmp_path / "out", overwrite=True, verify=False)
    assert json.loads((tmp_path / "out" / "steered" / "finsurg_surgery.json").read_text())["alpha"] == 2.0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["conservative", "steered"]


def test_failed_verification_leaves_nothing(tmp_path, tiny_model, monkeypatch):
    import finsurg.export as export_module
    from finsurg.variant.reports import VerificationReport

    def failing(directory, *args, **kwargs):
        comparison = {"max_abs_logit_diff": 9.0, "kl_mean": 1.0, "kl_max": 1.0, "argmax_agreement": 0.0}
        return VerificationReport.model_validate(
            {
                "variant": "steered",
                "alpha": 1.0,
                "dtype": "float32",
                "prompts": 1,
                "new_tokens": 4,
                "kl_limit": 1e-6,
                "export_dtype": None,
                "checksums_ok": True,
                "passed": False,
                "checks": ["checksums", "proof", "end_to_end:in_memory"],
                "proof": {
                    "structure": {
                        "tensors": 1,
                        "identical_shards": 1,
                        "tensors_compared": 0,
                        "biases": 1,
                        "problems": [],
                        "passed": True,
                    },
                    "blocks": [],
                    "input_rms": [1.0],
                    "input_tokens": 16,
                    "relative_tolerance": 1e-5,
                    "passed": True,
                },
                "float32": comparison
                | {
                    "greedy_identical": False,
                    "greedy_prompts_identical": 0,
                    "prefix_layers_bit_identical": True,
                    "prefix_layers_checked": 1,
                    "passed": False,
                    "steering_effect": {"kl_base_vs_hooked_mean": 0.0, "delta_cosine": 0.0, "live": False},
                },
            }
        )

    monkeypatch.setattr(export_module, "verify_variants", lambda paths, *args, **kwargs: [failing(p) for p in paths])
    recipe = tiny_recipe(tmp_path / "recipe")
    with pytest.raises(FinsurgError, match="steered failed verification"):
        export_checked(resolve_model(str(tiny_model)), recipe, 1.0, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # the export created it, and removed it on failure
