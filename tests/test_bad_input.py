"""Bad input: one line on stderr, exit status 2, no traceback, nothing left behind, the input untouched.

Each case builds its inputs under `inputs/`, runs the CLI in-process, and the harness checks the
four promises. One case also runs as a real process, where a traceback would show.
"""

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from finsurg.cli import main

from conftest import LLAMA_3_1_8B_SHAPES, make_tiny_llama, tiny_recipe, tree_hashes


def _recipe(inputs, mutate=None, **kwargs):
    directory = inputs / "recipe"
    tiny_recipe(directory, **kwargs)
    if mutate:
        raw = json.loads((directory / "recipe.json").read_text())
        mutate(raw)
        (directory / "recipe.json").write_text(json.dumps(raw))
    return directory


def _export(model, recipe, *extra):
    return ["export", "--model", str(model), "--recipe", str(recipe), *extra]


def _vectors(inputs, tensors):
    directory = _recipe(inputs)
    save_file(tensors, directory / "steering_vectors.safetensors")
    return directory


def _truncated(inputs, model):
    copy = make_tiny_llama(inputs / "truncated")
    shard = copy / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return _export(copy, _recipe(inputs))


def _corrupt_header(inputs, model):
    copy = make_tiny_llama(inputs / "corrupt")
    shard = copy / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:20] = b"not json!!!!"
    shard.write_bytes(bytes(data))
    return _export(copy, _recipe(inputs))


def _gpt2(inputs, model):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32)).save_pretrained(
        inputs / "gpt2"
    )
    return _export(inputs / "gpt2", _recipe(inputs))


def _pickle_only(inputs, model):
    from safetensors.torch import load_file

    target = inputs / "bin"
    target.mkdir()
    torch.save(load_file(model / "model.safetensors"), target / "pytorch_model.bin")
    (target / "config.json").write_bytes((model / "config.json").read_bytes())
    return _export(target, _recipe(inputs))


def _existing_output(inputs, model):
    (inputs / "out" / "steered").mkdir(parents=True)
    (inputs / "out" / "steered" / "keep.txt").write_text("mine")
    return _export(model, _recipe(inputs), "--out", str(inputs / "out"))


def _unwritable_output(inputs, model):
    (inputs / "a-file").write_text("not a directory")
    return _export(model, _recipe(inputs), "--out", str(inputs / "a-file" / "out"))


def _not_a_variant(inputs, model):
    (inputs / "empty").mkdir()
    return ["verify", str(inputs / "empty")]


CASES = {
    "missing model path": (lambda i, m: _export(i / "missing", _recipe(i)), "model not found"),
    "non-Llama model (GPT-2)": (_gpt2, "unsupported architecture GPT2LMHeadModel"),
    "layer out of range": (
        lambda i, m: _export(m, _recipe(i, lambda r: r.update(layers=[1, 7])), "--no-verify"),
        "layer 7 is out of range",
    ),
    "neuron out of range": (
        lambda i, m: _export(m, _recipe(i, lambda r: r["neurons"][0].update(index=64))),
        "neuron 64 is out of range",
    ),
    "NaN alpha": (lambda i, m: _export(m, _recipe(i), "--alpha", "nan"), "alpha must be a finite number"),
    "infinite alpha": (lambda i, m: _export(m, _recipe(i), "--alpha", "inf"), "alpha must be a finite number"),
    "zero alpha": (lambda i, m: _export(m, _recipe(i), "--alpha", "0"), "alpha must be non-zero"),
    "alpha that overflows the weights' dtype": (
        lambda i, m: _export(m, _recipe(i), "--alpha", "1e39"),
        "alpha 1e+39 makes offsets that overflow float32; the largest alpha that fits is",
    ),
    "alpha that overflows bfloat16": (
        lambda i, m: _export(m, _recipe(i, scale=100.0), "--alpha=-1e38", "--dtype", "bfloat16"),
        "overflow bfloat16; the largest alpha that fits is",
    ),
    "inf in a steering vector": (
        lambda i, m: _export(
            m, _vectors(i, {"steering.1": torch.full((64,), math.inf), "steering.2": torch.zeros(64)})
        ),
        "steering.1 contains NaN or inf",
    ),
    "wrong vector shape": (
        lambda i, m: _export(m, _vectors(i, {"steering.1": torch.zeros(65), "steering.2": torch.zeros(64)})),
        "steering.1 has shape [65], expected [64]",
    ),
    "malformed recipe JSON": (lambda i, m: _export(m, _broken(_recipe(i))), "is not valid JSON"),
    "unknown recipe version": (
        lambda i, m: _export(m, _recipe(i, lambda r: r.update(format="finsurg.recipe/9"))),
        "unsupported recipe format 'finsurg.recipe/9'",
    ),
    "recipe for another hidden size": (lambda i, m: _export(m, _recipe(i, hidden=128)), "is for hidden_size=128, but"),
    "missing recipe": (lambda i, m: _export(m, i / "nope.json"), "recipe not found"),
    "existing output without --overwrite": (_existing_output, "already exists; pass --overwrite"),
    "unwritable output directory": (_unwritable_output, "cannot create output directory"),
    "truncated safetensors": (_truncated, "truncated"),
    "corrupted safetensors header": (_corrupt_header, "corrupt safetensors"),
    ".bin-only checkpoint without --allow-pickle": (_pickle_only, "--allow-pickle"),
    "Hub id with no network": (
        lambda i, m: ["export", "--model", "some-org/no-such-model", "--recipe", str(_recipe(i))],
        "cannot fetch some-org/no-such-model from the Hugging Face Hub (offline",
    ),
    "invalid --dtype": (lambda i, m: _export(m, _recipe(i), "--dtype", "int4"), "invalid choice: 'int4'"),
    "analyze --layers out of range": (
        lambda i, m: ["analyze", "--model", str(m), "--layers", "2-9", "--out", str(i / "run")],
        "is out of range",
    ),
    "verify a directory that is no variant": (_not_a_variant, "it is not a finsurg variant"),
    "--dry-run without --push-to-hub": (
        lambda i, m: _export(m, _recipe(i), "--dry-run"),
        "--dry-run needs --push-to-hub",
    ),
    "--limit without --eval": (lambda i, m: _export(m, _recipe(i), "--limit", "5"), "--limit needs --eval"),
    "invalid --hub-namespace": (
        lambda i, m: _export(m, _recipe(i), "--push-to-hub", "--hub-namespace", "a b"),
        "invalid --hub-namespace 'a b'",
    ),
    "--device cuda without CUDA": (
        lambda i, m: ["analyze", "--model", str(m), "--device", "cuda", "--out", str(i / "run")],
        "--device cuda: no CUDA device on this machine",
    ),
    "--device tpu": (
        lambda i, m: ["analyze", "--model", str(m), "--device", "tpu", "--out", str(i / "run")],
        "unknown device 'tpu'",
    ),
    "unparseable --max-memory": (
        lambda i, m: ["verify", str(i), "--max-memory", "lots"],
        "give a size like 20GiB",
    ),
    "analyze at 8B without a GPU": (
        lambda i, m: ["analyze", "--model", str(_eight_b(i, m)), "--device", "cpu", "--out", str(i / "run")],
        "analyze needs about",
    ),
    "GGUF of an architecture finsurg cannot bake": (
        lambda i, m: ["cvector", "--model", str(_gguf_of(i, "gpt2")), "--out", str(i / "cv.gguf")],
        "gpt2",
    ),
    "truncated GGUF": (
        lambda i, m: ["cvector", "--model", str(_truncated_gguf(i)), "--out", str(i / "cv.gguf")],
        "cannot read",
    ),
    "unknown GGUF --type": (lambda i, m: ["gguf", str(i), "--type", "q4"], "invalid choice: 'q4'"),
    "control vector steering layer 0": (
        lambda i, m: ["cvector", "--model", str(m), "--recipe", str(_recipe(i, layers=(0, 1)))],
        "cannot steer layer 0",
    ),
    "GGUF of a variant whose SHA256SUMS does not verify": (
        lambda i, m: ["gguf", str(_tampered_variant(i, m))],
        "checksum failure",
    ),
    "push to an invalid repo id": (
        lambda i, m: ["push", str(i), "--repo-id", "no-slash", "--dry-run"],
        "invalid repo id 'no-slash'",
    ),
}


def _eight_b(inputs, model):
    """A model directory whose config has Llama-3.1-8B's shapes (the weights are never read)."""
    import shutil

    target = inputs / "eight-b"
    shutil.copytree(model, target)
    config = json.loads((target / "config.json").read_text()) | LLAMA_3_1_8B_SHAPES
    (target / "config.json").write_text(json.dumps(config))
    return target


def _gguf_of(inputs, arch):
    import gguf
    import numpy as np

    path = inputs / f"{arch}.gguf"
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _truncated_gguf(inputs):
    from finsurg.models.source import _default_model_gguf

    path = inputs / "truncated.gguf"
    path.write_bytes(_default_model_gguf().read_bytes()[:200_000])
    return path


def _tampered_variant(inputs, model):
    from finsurg.export import export_variants
    from finsurg.models.source import resolve_model
    from finsurg.settings import ExportOptions
    from finsurg.steer.bundle import Bundle
    from finsurg.steer.recipe import Recipe

    options = ExportOptions(out=inputs / "out", verify=False)
    export_variants(resolve_model(str(model)), Bundle.single(Recipe.load(_recipe(inputs)), 1.0), options)
    variant = inputs / "out" / "steered"
    (variant / "config.json").write_text((variant / "config.json").read_text() + " ")
    return variant


def _broken(directory):
    (directory / "recipe.json").write_text('{"format": "finsurg.recipe/1", "layers": [1,')
    return directory


def run_main(args, capsys):
    try:
        code = main(args)
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)  # default output directories land here, where the harness looks
    if "without CUDA" in case and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    build, message = CASES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args = build(inputs, tiny_model)
    if "--out" not in args and args[0] in ("export", "analyze"):
        args += ["--out", str(tmp_path / "out")]
    before, base_before = tree_hashes(inputs), tree_hashes(tiny_model)

    code, captured = run_main(args + ["--quiet"], capsys)

    assert code == 2, captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert message in captured.err
    assert captured.err.startswith("finsurg")
    assert tree_hashes(inputs) == before and tree_hashes(tiny_model) == base_before
    assert {p.name for p in tmp_path.iterdir()} <= {"hf", "inputs"}  # no output, not even an empty directory
    assert not [p for p in tmp_path.rglob("*partial*")]


def test_bad_input_as_a_process_has_no_traceback(tmp_path):
    recipe = _recipe(tmp_path, lambda r: r.update(layers=[99]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "finsurg",
            "export",
            "--recipe",
            str(recipe),
            "--model",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_harness_fails_a_good_input(tmp_path, tiny_model, capsys):
    """The promises the cases are held to are not empty: a valid export breaks them (exit 0, output written)."""
    args = _export(tiny_model, _recipe(tmp_path), "--no-verify", "--out", str(tmp_path / "out"), "--quiet")
    code, captured = run_main(args, capsys)
    assert code == 0 and captured.err == ""
    assert (tmp_path / "out" / "steered" / "SHA256SUMS").is_file()


def test_the_largest_alpha_named_by_the_refusal_exports(tmp_path, tiny_model, capsys):
    recipe = _recipe(tmp_path)
    code, captured = run_main(_export(tiny_model, recipe, "--alpha", "1e39", "--quiet"), capsys)
    largest = float(captured.err.rsplit(" ", 1)[1])
    args = _export(tiny_model, recipe, "--alpha", repr(largest), "--no-verify", "--out", str(tmp_path / "out"))
    code, captured = run_main(args + ["--quiet"], capsys)
    assert code == 0, captured.err
    biases = load_file(tmp_path / "out" / "steered" / "model-00002-of-00002.safetensors")
    assert all(torch.isfinite(value).all() for value in biases.values())
