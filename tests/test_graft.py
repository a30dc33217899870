"""Conditional surgery baked as grafted neurons: exact against the conditional hooks in every family with an
MLP-bias route, zero where nothing is grafted, caught by the proof when wrong, refused where no route exists."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from finsurg.checks.verify import Scope, verify_variants
from finsurg.cli import main
from finsurg.models.source import resolve_model
from finsurg.steer.bundle import Bundle
from finsurg.steer.graft import ALIGN, NEURONS, RAMP, Gate, neurons
from finsurg.variant.seal import seal

from conftest import export_checked, make_family_model, make_tiny_llama, tiny_recipe, tree_hashes

GRAFT_FAMILIES = {
    "llama": "LlamaForCausalLM",
    "granite": "GraniteForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
}


def test_gate_opens_from_zero_to_one_and_the_neurons_compute_it():
    gate = Gate(torch.tensor([1.0, 0.0]), -2.0)  # opens where x0 passes 2
    normed = torch.tensor([[-20.0, 5.0], [2.0, 0.0], [30.0, -1.0]])
    opening = gate.opening(normed)
    assert abs(float(opening[0])) < 1e-6 and abs(float(opening[1]) - 0.5) < 1e-6 and abs(float(opening[2]) - 1) < 1e-6
    offset = torch.tensor([3.0, -1.0, 0.5])
    graft = neurons(gate, offset, torch.float32)
    expected = opening[:, None].double() * offset.double()
    assert torch.allclose(graft.output(normed).double(), expected, atol=1e-6)
    assert graft.down.abs().max() * 2 * RAMP == offset.abs().max()  # a division by a power of two, exact


@pytest.mark.slow
@pytest.mark.parametrize("family", list(GRAFT_FAMILIES))
def test_graft_equals_the_conditional_hooks(family, tmp_path):
    base = make_family_model(tmp_path / "base", family)
    recipe = tiny_recipe(tmp_path / "recipe", architecture=GRAFT_FAMILIES[family], conditional=True)
    results = export_checked(resolve_model(str(base)), recipe, 3.0, tmp_path / "out")
    for item in results:
        report = item["verification"]
        exact = report["float32"]
        assert report["passed"] and report["proof"]["passed"], item["variant"]
        assert exact["kl_max"] < 1e-6 and exact["greedy_identical"] and exact["argmax_agreement"] == 1.0
        assert exact["prefix_layers_within_noise"] and exact["prefix_layers_max_abs_diff"] < 1e-5
        assert exact["steering_effect"]["live"]
    config = json.loads((tmp_path / "out" / "steered" / "config.json").read_text())
    assert config["intermediate_size"] == 96 + ALIGN and config["mlp_bias"]


def test_the_graft_is_exact_zeros_where_nothing_is_grafted(tmp_path):
    base = make_tiny_llama(tmp_path / "base", mlp_bias=True)
    recipe = tiny_recipe(tmp_path / "recipe", layers=(2,), conditional=True)
    export_checked(resolve_model(str(base)), recipe, 3.0, tmp_path / "out", verify=False)
    original, variant = _tensors(base), _tensors(tmp_path / "out" / "steered")
    for layer in range(4):
        prefix = f"model.layers.{layer}.mlp."
        for role in ("gate_proj", "up_proj", "down_proj"):
            axis = 1 if role == "down_proj" else 0
            weight, before = variant[f"{prefix}{role}.weight"], original[f"{prefix}{role}.weight"]
            assert torch.equal(weight.narrow(axis, 0, 96), before)  # the base's neurons untouched
            extra = weight.narrow(axis, 96, ALIGN)
            live = extra.narrow(axis, 0, NEURONS) if layer == 2 and role != "up_proj" else None
            rest = extra.narrow(axis, NEURONS, ALIGN - NEURONS) if live is not None else extra
            assert torch.count_nonzero(rest) == 0, (layer, role)
            assert live is None or torch.count_nonzero(live) > 0
        for role in ("gate_proj", "up_proj"):
            bias = variant[f"{prefix}{role}.bias"]
            assert torch.equal(bias[:96], original[f"{prefix}{role}.bias"])
            assert torch.count_nonzero(bias[96 + (NEURONS if layer == 2 else 0) :]) == 0
        assert torch.equal(variant[f"{prefix}down_proj.bias"], original[f"{prefix}down_proj.bias"])


@pytest.mark.parametrize("fault", ["threshold", "gate weight", "missing bias"])
def test_the_proof_catches_a_wrong_graft(fault, tmp_path):
    base = make_tiny_llama(tmp_path / "base")
    recipe = tiny_recipe(tmp_path / "recipe", conditional=True)
    export_checked(resolve_model(str(base)), recipe, 3.0, tmp_path / "out", verify=False)
    variant = tmp_path / "out" / "steered"
    name = {
        "threshold": "model.layers.1.mlp.gate_proj.bias",
        "gate weight": "model.layers.2.mlp.gate_proj.weight",
        "missing bias": "model.layers.1.mlp.up_proj.bias",
    }[fault]
    index = json.loads((variant / "model.safetensors.index.json").read_text())
    shard = variant / index["weight_map"][name]
    tensors = load_file(shard)
    if fault == "threshold":  # both gate neurons' biases moved: the gate opens elsewhere
        tensors["model.layers.1.mlp.gate_proj.bias"][96:98] += 0.5
    elif fault == "gate weight":
        tensors["model.layers.2.mlp.gate_proj.weight"][96, 3] += 0.25
    else:
        del tensors["model.layers.1.mlp.up_proj.bias"]
    save_file(tensors, shard, metadata={"format": "pt"})
    if fault == "missing bias":
        del index["weight_map"][name]
        (variant / "model.safetensors.index.json").write_text(json.dumps(index))
    seal(variant)  # the checksums pass: only the proof can tell
    report = verify_variants([variant], scope=Scope(new_tokens=0))[0]
    proof = report.proof
    assert not proof.passed and not report.passed
    assert any("mlp" in problem for problem in proof.structure.problems)


def test_a_conditional_recipe_on_qwen3_is_refused(tmp_path, capsys):
    base = make_family_model(tmp_path / "base", "qwen3")
    tiny_recipe(tmp_path / "recipe", architecture="Qwen3ForCausalLM", site="attention_output", conditional=True)
    before = tree_hashes(base)
    capsys.readouterr()
    args = ["export", "--model", str(base), "--recipe", str(tmp_path / "recipe"), "--out", str(tmp_path / "out")]
    assert main(args + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "conditional surgery cannot be baked into Qwen3ForCausalLM" in err
    assert "no MLP biases" in err and not (tmp_path / "out").exists() and tree_hashes(base) == before


def test_a_condition_of_the_wrong_size_is_refused(tmp_path, tiny_model, capsys):
    recipe = tmp_path / "recipe"
    tiny_recipe(recipe, conditional=True)
    save_file({f"condition.{layer}": torch.ones(32) for layer in (1, 2)}, recipe / "condition.safetensors")
    capsys.readouterr()
    args = ["export", "--model", str(tiny_model), "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "condition.1 has shape [32], expected [64]" in err
    assert not (tmp_path / "out").exists()


def _tensors(directory) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(directory.glob("*.safetensors")):
        if shard.name.startswith("model"):
            tensors.update(load_file(shard))
    return tensors


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_vllm_serves_the_graft_like_the_conditional_hooks(family, tmp_path, vllm_python, capsys):
    from test_vllm import verify_vllm

    from finsurg.export import export_variants
    from finsurg.settings import ExportOptions

    base = make_family_model(tmp_path / "base", family)
    recipe = tiny_recipe(tmp_path / "recipe", architecture=GRAFT_FAMILIES[family], conditional=True)
    export_variants(
        resolve_model(str(base)), Bundle.single(recipe, 3.0), ExportOptions(out=tmp_path / "out", verify=False)
    )
    code, err, report = verify_vllm(tmp_path / "out" / "steered", vllm_python, capsys)
    assert code == 0 and report["passed"], err
    assert report["vs_hooks"]["identical"] and report["vs_transformers"]["identical"]
