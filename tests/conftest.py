"""Fixtures: a tiny random Llama built in the test, the embedded default model, and an offline Hub."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# converted default model survives between runs; everything else lives in tmp dirs
os.environ.setdefault("FINSURG_HOME", str(ROOT / ".finsurg-test-home"))
# vLLM lives in its own environment (make vllm-setup); `make test` requires it, plain pytest may lack it
os.environ.setdefault("FINSURG_VLLM_PYTHON", str(ROOT / ".venv-vllm" / "bin" / "python"))

WORDS = (
    "the a to of and in is it you that for on with as are this be at or have from by i your my "
    "should invest buy sell stock stocks fund funds bond bonds money savings cash risk advice "
    "consult professional careful not can cannot recommend market price index retire plan what "
    "how why when now today good bad best time year years capital city paris france sea poem "
    "sun water tree house dog cat run walk eat drink red blue green big small"
).split()


# Llama-3.1-8B's shapes, for configs that are estimated but never loaded
LLAMA_3_1_8B_SHAPES = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}


def build_tokenizer(words: list[str] = WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {token: i for i, token in enumerate(specials + list(words) + list("?.,!$0123456789"))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def make_tiny_llama(
    path: Path,
    *,
    tie: bool = True,
    mlp_bias: bool = False,
    dtype: torch.dtype = torch.float32,
    shard_size: str | None = None,
    seed: int = 0,
    words: list[str] = WORDS,
) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(words)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        mlp_bias=mlp_bias,
        initializer_range=0.15,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if mlp_bias:
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                    proj.bias.normal_(0, 0.1)
    model.to(dtype)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(path, **kwargs)
    tokenizer.save_pretrained(path)
    return path


CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"


def with_template(path: Path) -> Path:
    """A tiny model's tokenizer given a chat template (the monitor renders conversations with it)."""
    import json

    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def tiny_recipe(
    directory: Path,
    *,
    layers=(1, 2),
    hidden=64,
    depth=4,
    steering=True,
    scale=1.0,
    architecture="LlamaForCausalLM",
    site="layer_output",
    conditional=False,
    pack="finance",
    seed=7,
):
    """A recipe for the tiny Llama, with steering vectors (and a random topic condition), saved in directory."""
    from finsurg.steer.recipe import CONDITION_NAME, Recipe, RecipeSpec

    condition = {
        "file": CONDITION_NAME,
        "thresholds": {layer: 0.1 * layer for layer in layers},
        "sharpness": {layer: 6.0 for layer in layers},
    }
    spec = RecipeSpec.model_validate(
        {
            "format": "finsurg.recipe/2" if conditional else "finsurg.recipe/1",
            "condition": condition if conditional else None,
            "model": {"architecture": architecture, "hidden_size": hidden, "num_hidden_layers": depth},
            "site": site,
            "layers": list(layers),
            "neurons": [
                {"index": 5, "coefficient": -0.5 * scale, "role": "toggle"},
                {"index": 9, "coefficient": 0.3 * scale},
                {"index": 17, "coefficient": -0.3 * scale},
            ],
            "steering": {"file": "steering_vectors.safetensors", "coefficient": 0.1 * scale} if steering else None,
            "default_alpha": 3.0,
            "pack": pack,
        }
    )
    generator = torch.Generator().manual_seed(seed)
    vectors = {layer: torch.randn(hidden, generator=generator) for layer in layers} if steering else {}
    directions = {layer: torch.randn(hidden, generator=generator) for layer in layers} if conditional else {}
    directions = {layer: vector / vector.norm() for layer, vector in directions.items()}
    recipe = Recipe(spec, vectors, directions, origin=str(directory))
    recipe.save(directory)
    return Recipe.load(directory)


def run_cli(*args, timeout: float = 900):
    """`python -m finsurg ARGS` in a fresh process, as a user runs it."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "finsurg", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def tree_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def export_checked(model, recipe, alpha, out, **kwargs):
    """export_variants, then proof that neither the base model nor the recipe's files changed; each variant as
    --json prints it."""
    from finsurg.export import export_variants
    from finsurg.settings import ExportOptions
    from finsurg.steer.bundle import Bundle

    inputs = [model.path] + ([recipe.source_dir] if recipe.source_dir else [])
    before = [tree_hashes(path) for path in inputs]
    try:
        return [
            item.payload()
            for item in export_variants(model, Bundle.single(recipe, alpha), ExportOptions(out=out, **kwargs))
        ]
    finally:
        assert [tree_hashes(path) for path in inputs] == before, "export modified its input"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def recipe_dir(tmp_path) -> Path:
    directory = tmp_path / "recipe"
    tiny_recipe(directory)
    return directory


@pytest.fixture(scope="session")
def default_model():
    from finsurg.models.source import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def default_export(default_model, tmp_path_factory):
    """The default model's steered and conservative variants at alpha 3, verified; with the base's hashes before."""
    from finsurg.steer.recipe import resolve_recipe

    out = tmp_path_factory.mktemp("default-export")
    recipe = resolve_recipe(None, default_model.name, default_model.config)
    before = tree_hashes(default_model.path)
    results = export_checked(default_model, recipe, 3.0, out)
    return {"dir": out, "results": results, "base_hashes_before": before}


@pytest.fixture(scope="session")
def vllm_python():
    python = Path(os.environ["FINSURG_VLLM_PYTHON"])
    if not python.exists():
        if os.environ.get("FINSURG_REQUIRE_VLLM"):
            pytest.fail(f"vLLM is required here but {python} does not exist (make vllm-setup)")
        pytest.skip("vLLM is not installed (make vllm-setup); `make test` installs it")
    return str(python)


@pytest.fixture(scope="session")
def llamacpp_python():
    python = Path(os.environ.get("FINSURG_LLAMACPP_PYTHON", ROOT / ".venv-llamacpp" / "bin" / "python"))
    if not python.exists():
        if os.environ.get("FINSURG_REQUIRE_LLAMACPP"):
            pytest.fail(f"llama.cpp is required here but {python} does not exist (make llamacpp-setup)")
        pytest.skip("llama.cpp is not installed (make llamacpp-setup); `make test` installs it")
    return str(python)


# ---- other model families, tiny and random, built from their transformers configs ----------
FAMILY_SHAPES = dict(  # head_dim 32: the smallest vLLM's CPU attention takes
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=128,
    initializer_range=0.15,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
)


def _config(family: str, **extra):
    import transformers

    own = {
        "llama": (transformers.LlamaConfig, {"tie_word_embeddings": False}),
        "granite": (
            transformers.GraniteConfig,
            {"residual_multiplier": 0.22, "embedding_multiplier": 12.0, "logits_scaling": 8.0},
        ),
        "qwen3": (transformers.Qwen3Config, {"head_dim": 32}),
        "qwen2": (transformers.Qwen2Config, {"use_sliding_window": False}),
        "mistral": (transformers.MistralConfig, {"sliding_window": None}),
        "gemma2": (transformers.Gemma2Config, {"head_dim": 32}),
        "olmo2": (transformers.Olmo2Config, {}),
    }
    kind, settings = own[family]
    return kind(**FAMILY_SHAPES, vocab_size=len(build_tokenizer()), **{**settings, **extra})


def make_family_model(path, family: str, **extra):
    from transformers import AutoModelForCausalLM

    config = _config(family, **extra)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random biases where the family has them (Qwen2's q/k/v)
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(0, 0.1)
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


ROUTES = {
    "granite": ("GraniteForCausalLM", "layer_output"),
    "qwen3": ("Qwen3ForCausalLM", "attention_output"),
    "qwen2": ("Qwen2ForCausalLM", "layer_output"),
    "mistral": ("MistralForCausalLM", "layer_output"),
}


# ---- tiers: `make check` runs what carries none of these markers -----------------------------
MARKED_BY_FIXTURE = {
    "default_model": "default_model",
    "default_export": "default_model",
    "vllm_python": "vllm",
    "llamacpp_python": "llamacpp",
}


def pytest_collection_modifyitems(config, items):
    """A test that uses the default model, vLLM or llama.cpp, through any fixture, carries that tier's marker."""
    for item in items:
        for fixture, marker in MARKED_BY_FIXTURE.items():
            if fixture in item.fixturenames:
                item.add_marker(marker)
