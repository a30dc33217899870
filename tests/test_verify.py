"""verify must catch the failures that would make a variant serve something other than the hooks."""

import json

import pytest
from safetensors.torch import load_file, save_file

from finsurg.checks.verify import verify_variant
from finsurg.cli import main
from finsurg.errors import FinsurgError
from finsurg.io.hashing import check_sums, write_sums
from finsurg.models.source import resolve_model

from conftest import export_checked, tiny_recipe, tree_hashes


@pytest.fixture
def variant(tmp_path, tiny_model):
    recipe = tiny_recipe(tmp_path / "recipe", scale=4.0)
    export_checked(resolve_model(str(tiny_model)), recipe, 3.0, tmp_path / "out", verify=False)
    return tmp_path / "out" / "steered"


@pytest.mark.slow
def test_clean_variant_passes_and_verify_is_read_only(variant, capsys):
    before = tree_hashes(variant)
    report = verify_variant(variant).model_dump(mode="json")
    assert report["passed"]
    assert tree_hashes(variant) == before
    assert main(["verify", str(variant), "--quiet"]) == 0
    assert tree_hashes(variant) == before  # every file byte-identical after a check
    assert not (variant / "verification.json").exists()

    assert main(["verify", str(variant), "--quiet", "--record"]) == 0
    recorded = json.loads((variant / "verification.json").read_text())
    assert recorded["passed"] and recorded["float32"]["kl_max"] == pytest.approx(report["float32"]["kl_max"], abs=1e-12)
    assert check_sums(variant)["verification.json"]  # re-sealed, and the seal verifies
    assert "Verification: baked vs hooks (passed)" in (variant / "README.md").read_text()


def test_biases_dropped_by_config_are_caught(variant):
    config = json.loads((variant / "config.json").read_text())
    config["mlp_bias"] = False
    (variant / "config.json").write_text(json.dumps(config))
    write_sums(variant)
    report = verify_variant(variant).model_dump()
    assert not report["passed"]
    assert not report["float32"]["steering_effect"]["live"]
    assert report["float32"]["kl_max"] > 1e-6


def test_wrong_bias_is_caught(variant):
    shard = variant / "model-00002-of-00002.safetensors"
    tensors = load_file(shard)
    tensors["model.layers.1.mlp.down_proj.bias"] *= 1.5
    save_file(tensors, shard, metadata={"format": "pt"})
    write_sums(variant)
    report = verify_variant(variant).model_dump()
    assert not report["passed"] and report["float32"]["kl_max"] > 1e-6


def test_tampered_file_fails_checksums(variant):
    (variant / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FinsurgError, match="tokenizer_config.json does not match"):
        verify_variant(variant)


def test_wrong_base_is_refused(variant, tmp_path):
    from conftest import make_tiny_llama

    other = make_tiny_llama(tmp_path / "other", seed=3)
    with pytest.raises(FinsurgError, match="is not the base this variant was made from"):
        verify_variant(variant, base_override=other)


def test_block_checks_run_elsewhere_stand_only_for_the_surgery_each_variant_records(variant):
    """An export hands in block checks it ran while writing; they count only if their offsets are the recorded ones.
    A structure check it hands in counts only for the same directory and sums."""
    from finsurg.checks.local_proof import Baking, Proven, prove
    from finsurg.checks.verify import OpenedVariant
    from finsurg.steer.surgery import Surgery
    from finsurg.variant.reports import BlockCheck, StructureCheck

    opened = OpenedVariant(variant, None, base_trusted=False)
    recorded = Baking.of(opened.variant)
    failing = [[BlockCheck(layer=1, steered=True, problem="planted", passed=False)]]

    def proof(surgery, structures=None):
        handed = Proven([surgery], failing, structures or {})
        return prove([opened.variant], opened.base, opened.arch, [opened.sums], opened.prompts, handed)[0]

    assert not proof(recorded).passed  # the recorded surgery: the checks handed in are the ones used
    doubled = Baking(Surgery.of({s.layer: 2 * s.offset for s in recorded.surgery.steers}), recorded.dtype)
    again = proof(doubled)  # another surgery: the blocks are checked again, on what the variant records
    assert again.passed and all(check.problem is None for check in again.blocks)
    planted = StructureCheck(
        tensors=1, identical_shards=0, tensors_compared=0, biases=0, problems=["planted"], passed=False
    )
    for sums, stands in ((opened.sums, True), ({**opened.sums, "config.json": "0" * 64}, False)):
        checked = proof(doubled, {opened.variant.directory: (sums, planted)})
        assert (checked.structure.problems == ["planted"]) is stands and checked.passed is not stands
