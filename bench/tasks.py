"""One measurement per process: `python bench/tasks.py TASK JSON_ARGS` prints one JSON line.

Each task reports its wall time and its own peak RSS (ru_maxrss), so every figure is measured
in a fresh process and baselines pay the same interpreter start as what they are compared with.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn) -> dict:
    clock = time.perf_counter()
    extra = fn() or {}
    return {"seconds": time.perf_counter() - clock, **extra}


# ---- export cost -------------------------------------------------------------------------------
def export_stream(model: str, recipe: str, out: str, link: str = "copy", variants: str = "both") -> dict:
    from finsurg import progress
    from finsurg.bake.writer import VariantWriter
    from finsurg.export import export_variants
    from finsurg.model_source import resolve_model
    from finsurg.steer.recipe import resolve_recipe

    progress.set_enabled(False)
    resolved = resolve_model(model)
    chosen = resolve_recipe(recipe, resolved.name, resolved.config)

    def run():
        if variants == "both":
            results = export_variants(resolved, chosen, 3.0, Path(out), verify=False, link=link)
            return {"shards": [r["shards"] for r in results]}
        Path(out).mkdir(parents=True)
        baked = VariantWriter(resolved, link=link).write(chosen, 3.0, "steered", Path(out))
        return {"shards": [baked.copied]}

    return timed(run)


def export_naive(model: str, recipe: str, out: str) -> dict:
    """The route without finsurg's exporter: load the model, set the biases, save_pretrained."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from finsurg.model_source import resolve_model
    from finsurg.steer.recipe import resolve_recipe

    resolved = resolve_model(model)
    chosen = resolve_recipe(recipe, resolved.name, resolved.config)

    def run():
        for variant, alpha in (("steered", 3.0), ("conservative", -3.0)):
            config = AutoConfig.from_pretrained(resolved.path)
            config.mlp_bias = True
            loaded = AutoModelForCausalLM.from_pretrained(resolved.path, config=config, dtype=torch.float32)
            offsets = chosen.offsets(alpha)
            with torch.no_grad():
                for index, layer in enumerate(loaded.model.layers):
                    for proj in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                        proj.bias.zero_()
                    if index in offsets:
                        layer.mlp.down_proj.bias.copy_(offsets[index])
            loaded.save_pretrained(Path(out) / variant)
            AutoTokenizer.from_pretrained(resolved.path).save_pretrained(Path(out) / variant)
            del loaded

    return timed(run)


def plain_copy(source: str, out: str) -> dict:
    """The physical limit: copy the weight files (shutil: sendfile in the kernel)."""

    def run():
        Path(out).mkdir(parents=True)
        for path in sorted(Path(source).glob("*.safetensors")):
            shutil.copyfile(path, Path(out) / path.name)

    return timed(run)


def make_synthetic(out: str, shards: int = 4) -> dict:
    """Random bf16 weights with Llama-3.1-8B's exact shapes, written tensor by tensor in slices."""
    import torch

    from finsurg.bake.safetensors_io import Entry, write_safetensors

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "dtype": "bfloat16",
        "mlp_bias": False,
        "attention_bias": False,
        "bos_token_id": 128000,
        "eos_token_id": 128009,
    }
    hidden, inter, kv = 4096, 14336, 1024
    shapes = {
        "model.embed_tokens.weight": (128256, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (128256, hidden),
    }
    for layer in range(32):
        prefix = f"model.layers.{layer}"
        shapes |= {
            f"{prefix}.self_attn.q_proj.weight": (hidden, hidden),
            f"{prefix}.self_attn.k_proj.weight": (kv, hidden),
            f"{prefix}.self_attn.v_proj.weight": (kv, hidden),
            f"{prefix}.self_attn.o_proj.weight": (hidden, hidden),
            f"{prefix}.mlp.gate_proj.weight": (inter, hidden),
            f"{prefix}.mlp.up_proj.weight": (inter, hidden),
            f"{prefix}.mlp.down_proj.weight": (hidden, inter),
            f"{prefix}.input_layernorm.weight": (hidden,),
            f"{prefix}.post_attention_layernorm.weight": (hidden,),
        }
    generator = torch.Generator().manual_seed(0)

    def source(shape):
        total, step = int(torch.tensor(shape).prod()), 32 * 1024 * 1024
        for start in range(0, total, step):
            count = min(step, total - start)
            yield (
                (torch.randn(count, generator=generator) * 0.02).to(torch.bfloat16).view(torch.uint8).numpy().tobytes()
            )

    def run():
        directory = Path(out)
        directory.mkdir(parents=True)
        names = list(shapes)
        per = -(-len(names) // shards)
        weight_map = {}
        for index in range(shards):
            filename = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
            chunk = names[index * per : (index + 1) * per]
            write_safetensors(
                directory / filename, [Entry(n, "BF16", shapes[n], lambda s=shapes[n]: source(s)) for n in chunk]
            )
            weight_map |= {n: filename for n in chunk}
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        (directory / "config.json").write_text(json.dumps(config))
        return {"bytes": sum(p.stat().st_size for p in directory.glob("*.safetensors"))}

    return timed(run)


# ---- inference cost of steering ----------------------------------------------------------------
def generation_speed(base: str, variant: str, rounds: int = 5, new_tokens: int = 64) -> dict:
    """Greedy tokens/s, batch 1: base and baked with plain transformers, TransformerLens hooks, torch hooks."""
    import torch

    from finsurg.loading import encode, hf_greedy, load_model, load_tokenizer
    from finsurg.packs import Pack
    from finsurg.steer.arch import by_name
    from finsurg.steer.hooks import boot_bridge, greedy, offset_hooks, offsets_added
    from finsurg.variant.record import Variant

    torch.manual_seed(0)
    record = Variant(Path(variant))
    arch = by_name(record.surgery.base_model.architecture)
    tokenizer = load_tokenizer(Path(base))
    prompts = [encode(tokenizer, text) for text in Pack.load(record.surgery.recipe.pack).verification_prompts()[:3]]
    base_model, baked_model = load_model(Path(base)), load_model(Path(variant))
    hooked_source = load_model(Path(base))
    bridge = boot_bridge(Path(base), hooked_source, tokenizer)
    tl_hooks = offset_hooks(record.offsets, arch)
    torch_model = load_model(Path(base))

    def torch_hooked(ids):
        with offsets_added(torch_model, record.offsets, arch):
            return hf_greedy(torch_model, ids, new_tokens)

    methods = {
        "base (transformers)": lambda ids: hf_greedy(base_model, ids, new_tokens),
        "baked variant (transformers)": lambda ids: hf_greedy(baked_model, ids, new_tokens),
        "TransformerLens hooks": lambda ids: greedy(bridge, ids, new_tokens, tl_hooks),
        "PyTorch forward hooks": torch_hooked,
    }
    for method in methods.values():  # warm-up
        method(prompts[0])
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, method in methods.items():  # interleaved, so drift hits every method alike
            clock = time.perf_counter()
            for ids in prompts:
                method(ids)
            rates[name].append(len(prompts) * new_tokens / (time.perf_counter() - clock))
    return {
        "tokens_per_second": {name: statistics.median(values) for name, values in rates.items()},
        "samples": rates,
        "rounds": rounds,
        "new_tokens": new_tokens,
        "prompts": len(prompts),
    }


# ---- analysis throughput -----------------------------------------------------------------------
def analysis_phase1(batch_size: int) -> dict:
    """Phase 1 (activations and head attention) over the shipped train prompts."""
    from finsurg.analysis.activations import collect, keyword_ids
    from finsurg.loading import load_model, load_tokenizer, prompt_ids
    from finsurg.model_source import resolve_model
    from finsurg.packs import Pack
    from finsurg.steer.arch import for_config
    from finsurg.steer.hooks import boot_bridge

    model = resolve_model(None)
    arch = for_config(model.config)
    tokenizer = load_tokenizer(model.path)
    bridge = boot_bridge(model.path, load_model(model.path), tokenizer)
    prompts = Pack.load()
    keywords = keyword_ids(tokenizer, prompts.manifest.keywords)
    sequences = [prompt_ids(tokenizer, t) for c in prompts.categories for t in c.train]

    def run():
        collect(bridge, tokenizer, arch, sequences, "last", batch_size, keywords)
        return {"prompts": len(sequences)}

    result = timed(run)
    result["prompts_per_second"] = result["prompts"] / result["seconds"]
    return result


def analyze_cli(out: str) -> dict:
    """The whole `finsurg analyze` on the default model, as a user runs it."""
    import subprocess

    def run():
        subprocess.run(
            [sys.executable, "-m", "finsurg", "analyze", "--out", out, "--overwrite", "--quiet"],
            check=True,
            capture_output=True,
        )
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"child_peak_rss_mb": usage.ru_maxrss / 1024}

    return timed(run)


TASKS = {
    f.__name__: f
    for f in (export_stream, export_naive, plain_copy, make_synthetic, generation_speed, analysis_phase1, analyze_cli)
}

if __name__ == "__main__":
    outcome = TASKS[sys.argv[1]](**json.loads(sys.argv[2]))
    outcome["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(outcome))
