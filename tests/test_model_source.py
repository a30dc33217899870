import json

import pytest
import torch

from finsurg.errors import FinsurgError
from finsurg.models.source import resolve_model

from conftest import make_tiny_llama


def test_local_directory(tiny_model):
    model = resolve_model(str(tiny_model))
    assert model.source == "local" and model.hidden_size == 64 and model.num_layers == 4
    assert model.path == tiny_model.resolve()


def test_non_llama_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32)).save_pretrained(tmp_path)
    with pytest.raises(FinsurgError, match="unsupported architecture GPT2LMHeadModel"):
        resolve_model(str(tmp_path))


def test_missing_path_and_not_a_model(tmp_path):
    with pytest.raises(FinsurgError, match="model not found"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(FinsurgError, match="not a .gguf"):
        resolve_model(str(tmp_path / "weights.txt"))
    with pytest.raises(FinsurgError, match="has no config.json"):
        resolve_model(str(tmp_path))


def _pickle_only(tmp_path):
    source = make_tiny_llama(tmp_path / "st")
    target = tmp_path / "bin"
    target.mkdir()
    from safetensors.torch import load_file

    torch.save(load_file(source / "model.safetensors"), target / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (target / name).write_bytes((source / name).read_bytes())
    return source, target


def test_pickle_needs_allow_pickle(tmp_path, monkeypatch):
    monkeypatch.setenv("FINSURG_HOME", str(tmp_path / "home"))
    source, target = _pickle_only(tmp_path)
    with pytest.raises(FinsurgError, match="--allow-pickle"):
        resolve_model(str(target))
    model = resolve_model(str(target), allow_pickle=True)
    assert model.path.is_relative_to(tmp_path / "home")
    from safetensors.torch import load_file

    converted = load_file(model.path / "model.safetensors")
    original = load_file(source / "model.safetensors")
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)


def test_hub_id_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(FinsurgError, match="cannot fetch some-org/some-model from the Hugging Face Hub"):
        resolve_model("some-org/some-model")


def test_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(FinsurgError, match="not valid JSON"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(FinsurgError, match="no weights"):
        resolve_model(str(tmp_path))
