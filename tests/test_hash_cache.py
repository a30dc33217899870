"""The hash cache: a second export of one base hashes none of its files; a changed file is never trusted."""

import hashlib
import os

import pytest

import finsurg.io.hashing as hashing
from finsurg.models.source import resolve_model

from conftest import export_checked, tiny_recipe


@pytest.fixture
def hashed(monkeypatch, tmp_path):
    """FINSURG_HOME in tmp_path, and the files sha256_file actually reads."""
    monkeypatch.setenv("FINSURG_HOME", str(tmp_path / "home"))
    read = []
    real = hashing.sha256_file

    def counting(path):
        read.append(os.path.realpath(path))
        return real(path)

    monkeypatch.setattr(hashing, "sha256_file", counting)
    return read


def test_a_known_file_is_not_read_again_and_a_changed_one_is(tmp_path, hashed):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 4096)
    assert hashing.cached_sha256(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    assert hashing.cached_sha256(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    assert len(hashed) == 1
    with open(path, "r+b") as handle:  # in place: same size, same inode
        handle.seek(100)
        handle.write(b"b")
    changed = b"a" * 100 + b"b" + b"a" * 3995
    assert hashing.cached_sha256(path) == hashlib.sha256(changed).hexdigest()
    assert len(hashed) == 2


def test_mtime_put_back_after_a_change_still_rehashes(tmp_path, hashed):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x" * 1000)
    hashing.cached_sha256(path)
    stat = os.stat(path)
    path.write_bytes(b"y" * 1000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as before: ctime still moves
    assert hashing.cached_sha256(path) == hashlib.sha256(b"y" * 1000).hexdigest()


def test_a_second_export_of_one_base_hashes_none_of_its_files(tmp_path, tiny_model, hashed):
    model = resolve_model(str(tiny_model))
    recipe = tiny_recipe(tmp_path / "recipe")
    base_files = {os.path.realpath(p) for p in model.weight_files()}
    export_checked(model, recipe, 3.0, tmp_path / "a", verify=False)
    first = [p for p in hashed if p in base_files]
    assert sorted(first) == sorted(base_files)  # each base file hashed once, for both variants
    hashed.clear()
    export_checked(model, recipe, 3.0, tmp_path / "b", verify=False)
    assert not [p for p in hashed if p in base_files]
    assert (tmp_path / "a" / "steered" / "SHA256SUMS").read_text() == (
        tmp_path / "b" / "steered" / "SHA256SUMS"
    ).read_text()


def test_without_a_writable_home_every_file_is_hashed(tmp_path, monkeypatch, hashed):
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    monkeypatch.setenv("FINSURG_HOME", str(home))
    path = tmp_path / "weights.bin"
    path.write_bytes(b"z" * 10)
    assert hashing.cached_sha256(path) == hashing.cached_sha256(path) == hashlib.sha256(b"z" * 10).hexdigest()
    assert len(hashed) == 2
