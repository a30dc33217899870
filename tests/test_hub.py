"""Model cards, and uploads through the real huggingface_hub client to a Hub-compatible server on 127.0.0.1."""

import json
import os
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from finsurg.io.hashing import check_sums
from finsurg.models.source import resolve_model
from finsurg.packs import Pack

from conftest import export_checked, tiny_recipe, tree_hashes
from hub_server import TestHub

TOKEN = "hf_finsurgTestToken0123456789"


@pytest.fixture(scope="module")
def variants(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("hub")
    recipe = tiny_recipe(root / "recipe", scale=4.0)
    export_checked(resolve_model(str(tiny_model)), recipe, 3.0, root / "out")
    return root / "out"


def hub_env(url, home):
    env = dict(os.environ, HF_ENDPOINT=url, HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1", HF_HOME=str(home))
    env.pop("HF_HUB_OFFLINE", None)
    return env


def run_cli(args, env):
    return subprocess.run(
        [sys.executable, "-m", "finsurg", *map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.slow
def test_card_parses_and_describes_the_surgery(variants):
    for name, alpha in (("steered", 3.0), ("conservative", -3.0)):
        card = ModelCard.load(variants / name / "README.md")
        assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
        assert {"finsurg", "steering", "neuron-surgery", "mechanistic-interpretability"} <= set(card.data.tags)
        assert card.text.lstrip().startswith(f"> **{Pack.load('finance').disclaimer}**")
        assert f"alpha **{alpha:+g}**" in card.text
        assert "| 5 | -2 | " in card.text  # neuron 5, coefficient -0.5 × scale 4
        assert "## Verification: baked vs hooks (passed)" in card.text
        assert "vllm serve" in card.text and "finsurg export --model" in card.text
        check_sums(variants / name)  # the card is sealed into SHA256SUMS


@pytest.mark.slow
def test_push_uploads_byte_identical_files(variants, tmp_path):
    before = tree_hashes(variants)
    with TestHub(tmp_path / "hub") as hub:
        env = hub_env(hub.url, tmp_path / "hf")
        dry = run_cli(["push", variants / "steered", "--repo-id", "acme/tiny-steered", "--dry-run", "--json"], env)
        assert dry.returncode == 0, dry.stderr
        plan = json.loads(dry.stdout)
        assert plan["dry_run"] and plan["url"] == f"{hub.url}/acme/tiny-steered"
        assert {f["path"] for f in plan["files"]} == set(tree_hashes(variants / "steered"))
        assert hub.state.repos == {} and tree_hashes(variants) == before

        done = run_cli(["push", variants / "steered", "--repo-id", "acme/tiny-steered", "--private"], env)
        assert done.returncode == 0, done.stderr
        assert hub.state.unhandled == []
        assert hub.state.repos["acme/tiny-steered"]["private"] is True
        uploaded = tree_hashes(hub.repo_dir("acme/tiny-steered"))
        assert uploaded == tree_hashes(variants / "steered")
        assert any(name.endswith(".safetensors") for name in uploaded)
        card = ModelCard.load(hub.repo_dir("acme/tiny-steered") / "README.md")
        assert "acme/tiny-steered" in card.text  # usage names the repo it was pushed to
        # the token travelled only as the Authorization header
        assert f"Bearer {TOKEN}" in hub.state.authorizations
        assert TOKEN not in done.stdout + done.stderr + dry.stdout + dry.stderr
        assert all(TOKEN.encode() not in p.read_bytes() for p in (variants / "steered").rglob("*") if p.is_file())

        again = run_cli(["push", variants / "steered", "--repo-id", "acme/tiny-steered"], env)
        assert again.returncode == 0, again.stderr  # the repo exists: create_repo(exist_ok=True)
        assert len(hub.state.repos["acme/tiny-steered"]["commits"]) == 2


@pytest.mark.slow
def test_push_refuses_a_damaged_variant_and_an_unreachable_hub(variants, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in (variants / "conservative").iterdir():
        if path.is_file():
            (damaged / path.name).write_bytes(path.read_bytes())
    (damaged / "config.json").write_text("{}")
    with TestHub(tmp_path / "hub") as hub:
        done = run_cli(["push", damaged, "--repo-id", "acme/x"], hub_env(hub.url, tmp_path / "hf"))
        assert done.returncode == 2 and "checksum failure" in done.stderr and hub.state.repos == {}
    down = run_cli(["push", variants / "conservative", "--repo-id", "acme/x"], hub_env("http://127.0.0.1:9", tmp_path))
    assert down.returncode == 2 and "Traceback" not in down.stderr
    assert down.stderr.startswith("finsurg: error: cannot upload to http://127.0.0.1:9")


@pytest.mark.default_model
def test_default_model_variants_upload_byte_identically(default_export, tmp_path):
    with TestHub(tmp_path / "hub") as hub:
        env = hub_env(hub.url, tmp_path / "hf")
        for name in ("steered", "conservative"):
            variant = default_export["dir"] / name
            done = run_cli(["push", variant, "--repo-id", f"acme/smollm2-{name}", "--quiet"], env)
            assert done.returncode == 0, done.stderr
            assert tree_hashes(hub.repo_dir(f"acme/smollm2-{name}")) == tree_hashes(variant)
            ModelCard.load(hub.repo_dir(f"acme/smollm2-{name}") / "README.md")
        assert hub.state.unhandled == []
