"""Crash safety, integrity and the link mode's isolation from the base model."""

import os
import signal
import subprocess
import sys
import time

import pytest

from finsurg.errors import FinsurgError
from finsurg.io.hashing import check_sums, sealed_files
from finsurg.models.source import resolve_model

from conftest import export_checked, tiny_recipe, tree_hashes


@pytest.fixture(scope="module")
def variant(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("reliability")
    export_checked(resolve_model(str(tiny_model)), tiny_recipe(root / "recipe"), 3.0, root / "out")
    return root / "out" / "steered"


def test_a_flipped_byte_in_any_file_is_detected(variant):
    names = sealed_files(variant) + ["SHA256SUMS"]
    assert len(names) >= 10
    for name in names:
        path = variant / name
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        try:
            with pytest.raises(FinsurgError, match="checksum failure|malformed"):
                check_sums(variant)
        finally:
            path.write_bytes(original)
    check_sums(variant)


def test_output_shards_never_share_storage_with_the_base(tmp_path, tiny_model):
    before = tree_hashes(tiny_model)
    results = export_checked(
        resolve_model(str(tiny_model)),
        tiny_recipe(tmp_path / "recipe"),
        3.0,
        tmp_path / "out",
        verify=False,
        link="auto",
    )
    shard = tmp_path / "out" / "steered" / "model-00001-of-00002.safetensors"
    assert results[0]["shards"] == {shard.name: results[0]["shards"][shard.name]}
    assert results[0]["shards"][shard.name] in ("reflink", "copy")
    assert os.stat(shard).st_ino != os.stat(tiny_model / "model.safetensors").st_ino  # never a hard link
    with open(shard, "r+b") as handle:  # a later write to the output...
        handle.write(b"\0" * 64)
    assert tree_hashes(tiny_model) == before  # ...never reaches the input


@pytest.mark.default_model
def test_sigkill_mid_export_leaves_nothing_published_and_a_rerun_succeeds(default_model, tmp_path):
    out = tmp_path / "out"
    before = tree_hashes(default_model.path)
    command = [sys.executable, "-m", "finsurg", "export", "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    partial = None
    while time.monotonic() < deadline and process.poll() is None:
        partials = list(out.glob(".steered.partial-*")) if out.exists() else []
        if partials and list(partials[0].glob("*.safetensors")):
            partial = partials[0]
            break
        time.sleep(0.002)
    assert partial is not None, "the export never started writing"
    process.send_signal(signal.SIGKILL)
    process.wait()

    assert not (out / "steered").exists() and not (out / "conservative").exists()
    assert tree_hashes(default_model.path) == before
    rerun = subprocess.run(command + ["--no-verify"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.iterdir()) == ["conservative", "steered"]  # the killed run's leftovers are gone
    for name in ("steered", "conservative"):
        check_sums(out / name)
    assert tree_hashes(default_model.path) == before


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_export_removes_its_partial_directories(stop, tmp_path, tiny_model):
    """What `timeout` and Ctrl-C send: the export unwinds, removes what it wrote, and exits 128 + the signal."""
    recipe = tmp_path / "recipe"
    tiny_recipe(recipe)
    out = tmp_path / "new" / "out"
    before = tree_hashes(tiny_model)
    command = [sys.executable, "-m", "finsurg", "export", "--model", str(tiny_model), "--recipe", str(recipe)]
    process = subprocess.Popen(command + ["--out", str(out), "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    sealed = False
    while time.monotonic() < deadline and process.poll() is None and not sealed:
        sealed = any((p / "SHA256SUMS").is_file() for p in out.glob(".*.partial-*")) if out.exists() else False
        time.sleep(0.002)
    assert sealed, (
        process.stderr.read() if process.poll() is not None else "no partial"
    )  # both partials exist while the variants are verified
    process.send_signal(stop)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + stop, err
    assert f"stopped by {stop.name}" in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()  # nothing left, not even the directories the export created
    assert tree_hashes(tiny_model) == before
