"""llama.cpp: the baked GGUF and the control-vector GGUF, written from the default model's own GGUF
and from a safetensors base through llama.cpp's converter, and checked inside llama.cpp."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from finsurg.cli import main
from finsurg.io.gguf_reading import open_gguf
from finsurg.io.hashing import check_sums, sha256_file
from finsurg.models.source import _default_model_gguf
from finsurg.variant.directory import Variant

from conftest import tree_hashes


@pytest.fixture(scope="module")
def steered(default_model, tmp_path_factory):
    """The default model's steered variant of the unconditional preset (its GGUF goes inside it)."""
    from finsurg.export import export_variants
    from finsurg.settings import ExportOptions
    from finsurg.steer.bundle import Bundle
    from finsurg.steer.recipe import Recipe

    out = tmp_path_factory.mktemp("gguf")
    export_variants(
        default_model,
        Bundle.single(Recipe.preset("smollm2-135m-unconditional"), 3.0),
        ExportOptions(out=out, verify=False),
    )
    return out / "steered"


@pytest.fixture(scope="module")
def conditional(default_export, tmp_path_factory):
    """A copy of the default export's steered variant: the shipped recipe, conditional."""
    target = tmp_path_factory.mktemp("gguf-conditional") / "steered"
    shutil.copytree(default_export["dir"] / "steered", target)
    return target


def _run(args, capsys):
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr()


def test_baked_gguf_is_the_base_gguf_plus_biases(steered, capsys):
    base = _default_model_gguf()
    base_hash = sha256_file(base)
    code, out = _run(["gguf", str(steered), "--json", "--quiet"], capsys)
    assert code == 0, out.err
    written = json.loads(out.out)
    path = steered / "model-keep.gguf"
    assert written["path"] == str(path) and sha256_file(base) == base_hash
    assert check_sums(steered)[path.name] == written["sha256"]  # recorded in SHA256SUMS
    assert (
        "model-keep.gguf" in (steered / "README.md").read_text() and "Modelfile" in (steered / "README.md").read_text()
    )
    source, baked = open_gguf(base), open_gguf(path)
    original = {t.name: t for t in source.tensors}
    added = {t.name: t for t in baked.tensors if t.name not in original}
    for tensor in baked.tensors:  # every base tensor byte for byte, quantized blocks included
        if tensor.name in original:
            assert tensor.tensor_type == original[tensor.name].tensor_type
            assert np.array_equal(
                np.asarray(tensor.data).view(np.uint8), np.asarray(original[tensor.name].data).view(np.uint8)
            )
    offsets = Variant(steered).surgery.always()
    assert sorted(added) == sorted(f"blk.{layer}.ffn_down.bias" for layer in offsets)
    for layer, offset in offsets.items():
        assert np.array_equal(np.asarray(added[f"blk.{layer}.ffn_down.bias"].data), offset.numpy())
    for field in source.fields.values():
        if not field.name.startswith("GGUF."):
            assert baked.get_field(field.name).contents() == field.contents()
    again = steered.parent / "again.gguf"
    assert _run(["gguf", str(steered), "--out", str(again), "--quiet"], capsys)[0] == 0
    assert sha256_file(again) == written["sha256"]  # deterministic


def test_control_vector_gguf(tmp_path, capsys):
    from finsurg.models.source import resolve_model
    from finsurg.steer.recipe import resolve_recipe

    out = tmp_path / "cv.gguf"
    code, captured = _run(["cvector", "--out", str(out), "--quiet"], capsys)
    assert code == 0, captured.err
    reader = open_gguf(out)
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    model = resolve_model(None)
    offsets = resolve_recipe(None, model.name, model.config).offsets(1.0)
    assert reader.get_field("controlvector.layer_count").contents() == len(offsets)
    assert {t.name: np.asarray(t.data).copy() for t in reader.tensors}.keys() == {f"direction.{n}" for n in offsets}
    for tensor in reader.tensors:
        assert np.array_equal(np.asarray(tensor.data), offsets[int(tensor.name.split(".")[1])].numpy())


def test_conditional_variant_is_its_grafted_checkpoint_in_llamacpp(conditional, llamacpp_python, capsys, monkeypatch):
    monkeypatch.setenv("FINSURG_LLAMACPP_PYTHON", llamacpp_python)
    variant = Variant(conditional)
    assert variant.surgery.gated  # the shipped recipe is conditional
    code, out = _run(["gguf", str(conditional), "--type", "f32", "--json", "--quiet"], capsys)
    assert code == 0, out.err
    baked = open_gguf(conditional / "model-f32.gguf")
    config = json.loads((conditional / "config.json").read_text())
    assert baked.get_field("llama.feed_forward_length").contents() == config["intermediate_size"] == 1536 + 32
    names = {t.name for t in baked.tensors}
    for layer in variant.surgery.layers:
        assert {f"blk.{layer}.ffn_gate.bias", f"blk.{layer}.ffn_up.bias", f"blk.{layer}.ffn_down.bias"} <= names
    code, out = _run(
        [
            "verify",
            str(conditional),
            "--engine",
            "llama.cpp",
            "--llamacpp-python",
            llamacpp_python,
            "--json",
            "--quiet",
        ],
        capsys,
    )
    report = json.loads(out.out)
    assert code == 0 and report["passed"], out.err
    assert report["baked_vs_control_vector"] is None  # a control vector cannot express the gate
    assert report["baked_vs_transformers"]["max_abs_logit_diff"] <= report["tolerance"]
    assert report["baked_vs_transformers"]["argmax_agreement"] >= report["noise_floor"]["argmax_agreement"] - 0.02
    print(json.dumps({k: report[k] for k in ("baked_vs_transformers", "noise_floor", "tolerance")}))


def test_llamacpp_routes_agree(steered, llamacpp_python, capsys):
    before = tree_hashes(steered)
    code, out = _run(
        ["verify", str(steered), "--engine", "llama.cpp", "--llamacpp-python", llamacpp_python, "--json", "--quiet"],
        capsys,
    )
    report = json.loads(out.out)
    assert code == 0 and report["passed"], out.err
    assert tree_hashes(steered) == before  # read-only without --record
    routes = report["baked_vs_control_vector"]
    assert report["baked_vs_control_vector_tokens"]["identical"]
    assert routes["max_abs_logit_diff"] <= report["tolerance"] and routes["argmax_agreement"] == 1.0
    # the variant in llama.cpp against transformers: no further from it than the base GGUF is from the base
    assert (
        report["baked_vs_transformers"]["max_abs_logit_diff"] <= 2 * report["noise_floor"]["max_abs_logit_diff"] + 1e-3
    )
    print(json.dumps({k: report[k] for k in ("baked_vs_control_vector", "baked_vs_transformers", "noise_floor")}))


def test_safetensors_base_goes_through_llamacpps_converter(
    default_model, tmp_path, llamacpp_python, capsys, monkeypatch
):
    """A base without a GGUF: converted once by convert_hf_to_gguf.py, then baked the same way."""
    from finsurg.engines.converter import converter

    if converter(llamacpp_python) is None:
        pytest.fail("make llamacpp-setup puts convert_hf_to_gguf.py beside the llama.cpp environment")
    monkeypatch.setenv("FINSURG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FINSURG_LLAMACPP_PYTHON", llamacpp_python)
    local = tmp_path / "base"
    shutil.copytree(default_model.path, local)
    code, out = _run(
        [
            "export",
            "--model",
            str(local),
            "--recipe",
            "smollm2-135m-unconditional",
            "--out",
            str(tmp_path / "out"),
            "--no-verify",
            "--gguf",
            "--type",
            "f32",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, out.err
    baked = open_gguf(tmp_path / "out" / "steered" / "model-f32.gguf")
    offsets = Variant(tmp_path / "out" / "steered").surgery.always()
    names = {t.name: t for t in baked.tensors}
    for layer, offset in offsets.items():
        assert np.array_equal(np.asarray(names[f"blk.{layer}.ffn_down.bias"].data), offset.numpy())
    assert (tmp_path / "out" / "finsurg-control-vector.gguf").is_file()
    converted = list((tmp_path / "home" / "gguf").rglob("*.gguf"))
    assert len(converted) == 1  # the base, converted once by llama.cpp's converter
    weight = open_gguf(converted[0])
    assert weight.get_field("general.architecture").contents() == "llama"
