"""Scale: device choice, the memory estimate, the layer-local proof against the end-to-end check,
streamed against in-memory verification, and disk and I/O failures during an export."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from finsurg.checks.verify import Scope, verify_variant
from finsurg.cli import main
from finsurg.devices import Placement, compute_dtype, parameter_count, resolve_device
from finsurg.errors import FinsurgError
from finsurg.io.hashing import write_sums
from finsurg.models.source import resolve_model

from conftest import LLAMA_3_1_8B_SHAPES, export_checked, make_tiny_llama, tiny_recipe, tree_hashes


def test_device_selection(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert compute_dtype("auto", torch.device("cpu")) == torch.float32
    assert compute_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert compute_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(FinsurgError, match="unknown --device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(FinsurgError, match="no CUDA device"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(FinsurgError, match="has 2 CUDA device"):
        resolve_device("cuda:2")
    placement = Placement.of("cuda:1", "auto", "0=10GiB,1=20GiB,cpu=50GiB")
    assert placement.dtype == torch.bfloat16 and placement.budget == 30 * 1024**3
    assert placement.dispatch == {0: 10 * 1024**3, 1: 20 * 1024**3, "cpu": 50 * 1024**3}


@pytest.mark.parametrize("tie", [True, False])
def test_parameter_count_matches_the_model(tmp_path, tie):
    from transformers import AutoModelForCausalLM

    path = make_tiny_llama(tmp_path / "m", tie=tie)
    model = AutoModelForCausalLM.from_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_parameter_count_of_llama_3_1_8b():
    assert parameter_count(LLAMA_3_1_8B_SHAPES) == 8_030_261_248  # the published count


def test_estimate_refuses_before_loading(tmp_path):
    config = json.loads((make_tiny_llama(tmp_path / "m") / "config.json").read_text())
    Placement.of("cpu", "float32", "1GiB").require("analyze", config, copies=2)  # a tiny model fits
    eight_b = config | LLAMA_3_1_8B_SHAPES
    with pytest.raises(FinsurgError, match=r"analyze needs about 3\d\.\d GiB .* 24\.0 GiB .*--compute-dtype bfloat16"):
        Placement.of("cpu", "float32", "24GiB").require("analyze", eight_b)
    Placement.of("cpu", "bfloat16", "24GiB").require("analyze", eight_b)
    with pytest.raises(FinsurgError, match="--device cuda"):
        Placement.of("cpu", "float32", "24GiB").require("analyze", eight_b, copies=2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    model = make_tiny_llama(root / "model")
    recipe = tiny_recipe(root / "recipe")
    export_checked(resolve_model(str(model)), recipe, 3.0, root / "out", verify=False)
    return root


def test_streamed_and_in_memory_agree(exported):
    variant = exported / "out" / "steered"
    before = tree_hashes(variant)
    memory = verify_variant(variant)
    streamed = verify_variant(variant, scope=Scope(full=True, max_memory={"default": 1024}))
    assert tree_hashes(variant) == before
    assert memory.float32.mode == "in_memory" and streamed.float32.mode == "streamed"
    assert memory.passed and streamed.passed
    a, b = memory.float32, streamed.float32
    assert a.argmax_agreement == b.argmax_agreement == 1.0
    assert a.kl_max < 1e-6 and b.kl_max < 1e-6
    assert abs(a.max_abs_logit_diff - b.max_abs_logit_diff) < 1e-5
    assert a.prefix_layers_bit_identical and b.prefix_layers_bit_identical
    assert abs(a.steering_effect.kl_base_vs_hooked_mean - b.steering_effect.kl_base_vs_hooked_mean) < 1e-6
    skipped = verify_variant(variant, scope=Scope(max_memory={"default": 1024}))
    assert skipped.float32 is None and skipped.proof.passed and "--full" in skipped.end_to_end_note


def _edit_tensor(variant, name, change):
    for shard in variant.glob("*.safetensors"):
        tensors = load_file(shard)
        if name in tensors:
            tensors[name] = change(tensors[name].clone())
            save_file(tensors, shard, metadata={"format": "pt"})
            return
    raise AssertionError(name)


def _flip_high_byte(tensor):
    raw = tensor.flatten().view(torch.uint8)
    raw[3] ^= 0x40  # an exponent bit of the first float32
    return tensor


DEFECTS = {
    "wrong bias": lambda v: _edit_tensor(
        v, "model.layers.1.mlp.down_proj.bias", lambda t: t + torch.eye(t.shape[0])[7] * 0.05
    ),
    "scaled offset": lambda v: _edit_tensor(v, "model.layers.2.mlp.down_proj.bias", lambda t: t * 2),
    "changed weight byte": lambda v: _edit_tensor(v, "model.layers.2.mlp.up_proj.weight", _flip_high_byte),
    "mlp_bias flag missing": lambda v: (v / "config.json").write_text(
        json.dumps(json.loads((v / "config.json").read_text()) | {"mlp_bias": False})
    ),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_the_proof_catches_what_the_end_to_end_check_catches(exported, tmp_path, defect):
    import shutil

    variant = tmp_path / "steered"
    shutil.copytree(exported / "out" / "steered", variant)
    DEFECTS[defect](variant)
    write_sums(variant)  # re-sealed: the checksums alone cannot see it
    report = verify_variant(variant, exported / "model")
    assert report.float32 is not None and not report.float32.passed, "the end-to-end check misses it"
    assert not report.proof.passed
    assert not report.passed


def test_export_refuses_when_the_disk_is_too_small(tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    model = make_tiny_llama(tmp_path / "model")
    tiny_recipe(tmp_path / "recipe")
    recipe = tmp_path / "recipe"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    capsys.readouterr()
    code = main(["export", "--model", str(model), "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "the export writes about" in err and "GiB free" in err
    assert not (tmp_path / "out").exists()


def test_a_write_error_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import errno

    import finsurg.bake.writer as writer

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    model = make_tiny_llama(tmp_path / "model")
    tiny_recipe(tmp_path / "recipe")
    recipe = tmp_path / "recipe"
    before = tree_hashes(model)
    monkeypatch.setattr(writer, "write_safetensors", full)
    capsys.readouterr()
    code = main(["export", "--model", str(model), "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and tree_hashes(model) == before
