"""One settings object per command: flags, FINSURG_ environment variables and a TOML file agree."""

import json

import pytest

from finsurg import api
from finsurg.cli import main
from finsurg.errors import FinsurgError
from finsurg.settings import EvalSettings, ExportSettings, VerifySettings

from conftest import tiny_recipe, tree_hashes


def _alpha(out):
    return json.loads((out / "steered" / "finsurg_surgery.json").read_text())["alpha"]


def test_export_from_a_config_file(tmp_path, tiny_model, capsys):
    recipe = tiny_recipe(tmp_path / "recipe")
    out = tmp_path / "out"
    config = tmp_path / "run.toml"
    config.write_text(
        f'[export]\nmodel = "{tiny_model}"\nrecipe = "{recipe.source_dir}"\nalpha = 2.5\n'
        f'out = "{out}"\nverify = false\n\n[analyze]\nalpha_is_not_read_here = 1\n'
    )
    assert main(["export", "--config", str(config), "--quiet"]) == 0
    assert _alpha(out) == 2.5
    assert main(["export", "--config", str(config), "--alpha", "1.5", "--overwrite", "--quiet"]) == 0
    assert _alpha(out) == 1.5  # a flag beats the file


def test_export_from_the_environment(tmp_path, tiny_model, monkeypatch):
    recipe = tiny_recipe(tmp_path / "recipe")
    out = tmp_path / "out"
    monkeypatch.setenv("FINSURG_ALPHA", "2")
    monkeypatch.setenv("FINSURG_MODEL", str(tiny_model))
    monkeypatch.setenv("FINSURG_RECIPE", str(recipe.source_dir))
    monkeypatch.setenv("FINSURG_VERIFY", "false")
    assert main(["export", "--out", str(out), "--quiet"]) == 0
    assert _alpha(out) == 2.0
    config = tmp_path / "run.toml"
    config.write_text("[export]\nalpha = 7\n")
    assert main(["export", "--out", str(out), "--config", str(config), "--overwrite", "--quiet"]) == 0
    assert _alpha(out) == 2.0  # the environment beats the file


def test_settings_are_the_api(tmp_path, tiny_model):
    recipe = tiny_recipe(tmp_path / "recipe")
    before = tree_hashes(tiny_model)
    outcome = api.export(
        ExportSettings(
            model=str(tiny_model),
            recipe=str(recipe.source_dir),
            alpha=1.0,
            out=tmp_path / "out",
            verify=False,
            quiet=True,
        )
    )
    assert [v.alpha for v in outcome.variants] == [1.0, -1.0]
    assert outcome.status() == 0 and outcome.payload()["variants"] == [v.payload() for v in outcome.variants]
    assert tree_hashes(tiny_model) == before


def test_groups_and_validation_come_from_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FINSURG_EVAL__LIMIT", "3")
    assert ExportSettings.load().eval.limit == 3  # setting a grouped option switches its group on
    monkeypatch.delenv("FINSURG_EVAL__LIMIT")
    assert ExportSettings.load().eval is None
    with pytest.raises(FinsurgError, match="--limit: input should be greater than 0"):
        EvalSettings.load({"variants": [tmp_path], "limit": 0})
    with pytest.raises(FinsurgError, match="--tokens: input should be a valid integer"):
        VerifySettings.load({"variant": tmp_path, "tokens": "many"})
    bad = tmp_path / "bad.toml"
    bad.write_text("[export\n")
    with pytest.raises(FinsurgError, match="is not valid TOML"):
        ExportSettings.load(config=bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[export]\nalpah = 2\n")
    with pytest.raises(FinsurgError, match="unknown field 'alpah'"):
        ExportSettings.load(config=unknown)


@pytest.mark.parametrize(
    "args, message",
    [
        (["verify", "x", "--tokens", "0"], "--tokens: input should be greater than 0"),
        (["eval", "x", "--eval-batch-size", "0"], "--eval-batch-size: input should be greater than 0"),
        (["export", "--config", "missing.toml"], "config file not found: missing.toml"),
        (["export", "--alpha", "x"], "--alpha: input should be a valid number"),
    ],
)
def test_bad_settings_are_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
