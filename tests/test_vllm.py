"""vLLM serves the default model's variants token for token as transformers and the hooks do."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from finsurg.io.hashing import write_sums
from finsurg.models.loading import hf_greedy, load_model, load_tokenizer, prompt_ids
from finsurg.settings import ExportOptions
from finsurg.steer.bundle import Bundle

from conftest import ROUTES, make_family_model, tiny_recipe
from vllm_server import OpenAIServer

pytestmark = [pytest.mark.default_model, pytest.mark.vllm]
QUESTION = "Should I buy Bitcoin right now?"  # on topic: the conditional variants differ from the first token
MAX_TOKENS = 24


def verify_vllm(variant, python, capsys, *extra):
    """`finsurg verify --engine vllm --json`, in this process (vLLM itself runs in its own)."""
    from finsurg.cli import main

    capsys.readouterr()
    code = main(["verify", "--engine", "vllm", "--vllm-python", python, "--json", "--quiet", str(variant), *extra])
    out, err = capsys.readouterr()
    return code, err, (json.loads(out) if out.strip() else None)


def test_vllm_engine_matches_transformers_and_hooks(default_export, vllm_python, capsys):
    variant = default_export["dir"] / "steered"
    code, err, report = verify_vllm(variant, vllm_python, capsys, "--record")
    assert code == 0, err
    assert report["passed"]
    for reference in ("vs_transformers", "vs_hooks"):
        assert report[reference]["identical"]
        assert report[reference]["tokens_matching"] == report[reference]["tokens_total"] == 6 * 32
    assert json.loads((variant / "verification_vllm.json").read_text()) == report


def test_vllm_engine_catches_biases_that_config_drops(default_export, vllm_python, tmp_path, capsys):
    """mlp_bias false: vLLM (and transformers) silently serve the unsteered model; only the hooks tell."""
    variant = tmp_path / "dropped"
    shutil.copytree(default_export["dir"] / "steered", variant)
    config = json.loads((variant / "config.json").read_text())
    config["mlp_bias"] = False
    (variant / "config.json").write_text(json.dumps(config))
    write_sums(variant)
    code, _, report = verify_vllm(variant, vllm_python, capsys)
    assert code == 1
    assert not report["passed"] and not report["vs_hooks"]["identical"]
    assert report["vs_transformers"]["identical"]  # both engines drop the biases alike


def test_openai_server_serves_each_variant_like_transformers(default_export, vllm_python, tmp_path):
    served = {}
    for name in ("steered", "conservative"):
        variant = default_export["dir"] / name
        ids = prompt_ids(load_tokenizer(variant), QUESTION)
        expected = hf_greedy(load_model(variant), torch.tensor([ids]), MAX_TOKENS)
        with OpenAIServer(vllm_python, variant, tmp_path / f"{name}.log") as server:
            served[name] = server.complete(ids, MAX_TOKENS)
        assert server.stopped
        assert served[name] == expected, name
    assert served["steered"] != served["conservative"]  # two different models were served


def test_vllm_missing_is_one_clear_line(default_export, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "finsurg",
            "verify",
            "--engine",
            "vllm",
            "--vllm-python",
            sys.executable,
            str(default_export["dir"] / "steered"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert done.returncode == 2 and done.stderr.startswith("finsurg: error: vLLM is not installed")


@pytest.mark.parametrize("family", list(ROUTES))
def test_vllm_serves_each_family_or_the_record_says_it_cannot(family, tmp_path, vllm_python, capsys):
    """Token for token against transformers and the hooks on the original architecture."""
    from finsurg.export import export_variants
    from finsurg.models.source import resolve_model
    from finsurg.steer.arch import by_name

    architecture, site = ROUTES[family]
    base = make_family_model(tmp_path / "base", family)
    recipe = tiny_recipe(tmp_path / "recipe", architecture=architecture, site=site)
    export_variants(
        resolve_model(str(base)), Bundle.single(recipe, 3.0), ExportOptions(out=tmp_path / "out", verify=False)
    )
    _, err, report = verify_vllm(tmp_path / "out" / "steered", vllm_python, capsys)
    assert report is not None, err
    assert report["vs_transformers"]["identical"] == report["passed"] == (by_name(architecture).vllm_drops is None)
    assert report["vs_hooks"]["identical"] == report["passed"]


def test_eval_on_vllm_names_each_runs_engine_and_keeps_parity_on_transformers(default_export, vllm_python, tmp_path):
    from finsurg.cli import main

    out = tmp_path / "eval"
    code = main(
        ["eval", str(default_export["dir"] / "steered"), "--engine", "vllm", "--vllm-python", vllm_python]
        + ["--limit", "3"]
        + ["--out", str(out), "--quiet", "--json"]
    )
    report = json.loads((out / "eval.json").read_text())
    assert code == 0 and report["passed"]
    assert report["engines"]["base"] == report["engines"]["steered/baked"] == "vllm"
    assert report["engines"]["steered/hooked"] == report["engines"]["steered/baked:transformers"] == "transformers"
    assert report["variants"]["steered"]["parity"]["passed"]
    # the same variant on vLLM and on transformers: the same figures
    vllm_run, hf_run = report["metrics"]["steered/baked"], report["metrics"]["steered/baked:transformers"]
    for task, values in vllm_run.items():
        for metric, value in values.items():
            assert abs(value - hf_run[task][metric]) < 1e-2 * max(1.0, abs(value)), (task, metric)
