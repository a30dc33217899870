import json

import pytest

from finsurg.cli import main

from conftest import run_cli, tiny_recipe, tree_hashes


def test_help_explains_commands():
    done = run_cli("--help")
    assert done.returncode == 0
    for word in ("surgery", "export", "verify", "disclaimer"):
        assert word in done.stdout
    done = run_cli("export", "--help")
    assert "--alpha" in done.stdout and "--overwrite" in done.stdout and "--dtype" in done.stdout


def test_bad_model_path_is_one_line_exit_2(tmp_path):
    done = run_cli("export", "--model", tmp_path / "missing", "--out", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert done.stderr.startswith("finsurg: error: model not found")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_json_and_verify(tmp_path, tiny_model, capsys):
    recipe_dir = tmp_path / "recipe"
    tiny_recipe(recipe_dir, scale=4.0)
    before = tree_hashes(tiny_model)
    code = main(
        [
            "export",
            "--model",
            str(tiny_model),
            "--recipe",
            str(recipe_dir),
            "--alpha",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--json",
            "--quiet",
        ]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert [v["alpha"] for v in payload["variants"]] == [2.0, -2.0]
    assert all(v["verification"]["passed"] for v in payload["variants"])
    assert tree_hashes(tiny_model) == before

    variant = tmp_path / "out" / "steered"
    assert main(["verify", str(variant), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["float32"]["kl_max"] < 1e-6 and report["float32"]["greedy_identical"]

    assert main(["verify", str(variant), "--checksums"]) == 0
    capsys.readouterr()
    shard = variant / "model-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert main(["verify", str(variant), "--checksums"]) == 2
    err = capsys.readouterr().err
    assert "checksum failure" in err and "model-00001-of-00002.safetensors" in err


def test_existing_output_refused(tmp_path, tiny_model, capsys):
    recipe_dir = tmp_path / "recipe"
    tiny_recipe(recipe_dir)
    args = [
        "export",
        "--model",
        str(tiny_model),
        "--recipe",
        str(recipe_dir),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        "--no-verify",
    ]
    base = tree_hashes(tiny_model)
    assert main(args) == 0
    capsys.readouterr()
    snapshot = tree_hashes(tmp_path / "out")
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert tree_hashes(tmp_path / "out") == snapshot
    assert tree_hashes(tiny_model) == base
