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
import subprocess
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
def export_stream(
    model: str,
    recipe: str,
    out: str,
    link: str = "copy",
    variants: str = "both",
    verify: bool = False,
    bundled: str | None = None,
) -> dict:
    """`finsurg export` of both variants through the API (with `bundled`, of a bundle of the two recipes, its
    cross-talk not measured); or the writer alone, one variant (the stream's cost)."""
    from finsurg import api, progress
    from finsurg.settings import ExportSettings

    if variants == "both":
        recipes = [recipe] + ([bundled] if bundled else [])
        settings = ExportSettings(
            model=model, recipe=recipes, alpha=3.0, out=Path(out), verify=verify, link=link, crosstalk=False
        )

        def run():
            results = api.export(settings.model_copy(update={"quiet": True})).variants
            checks = [r.verification.checks for r in results if r.verification is not None]
            return {"shards": [r.shards for r in results], "checks": checks}

        return timed(run)
    from finsurg.bake.writer import VariantWriter  # a micro-benchmark of the writer: no API runs it alone
    from finsurg.models.source import resolve_model
    from finsurg.steer.recipe import resolve_recipe

    progress.set_enabled(False)
    resolved = resolve_model(model)
    chosen = resolve_recipe(recipe, resolved.name, resolved.config)

    def write():
        Path(out).mkdir(parents=True)
        baked = VariantWriter(resolved, link=link).write(chosen.surgery(3.0), "steered", Path(out))
        return {"shards": [baked.copied]}

    return timed(write)


def conditional_recipe(recipe: str, out: str, pack: str = "finance", seed: int = 0) -> dict:
    """A preset made conditional: a random unit topic condition at each steered layer (the bake's cost does not
    depend on what the condition reads), for `pack`."""
    import torch

    from finsurg.steer.recipe import CONDITION_NAME, CONDITIONAL_FORMAT, Recipe, RecipeSpec

    plain = Recipe.preset(recipe)
    generator = torch.Generator().manual_seed(seed)
    directions = {}
    for layer in plain.layers:
        vector = torch.randn(plain.spec.model.hidden_size, generator=generator)
        directions[layer] = vector / vector.norm()
    condition = {
        "file": CONDITION_NAME,
        "thresholds": {layer: 0.5 for layer in plain.layers},
        "sharpness": {layer: 8.0 for layer in plain.layers},
    }
    spec = RecipeSpec.model_validate(
        plain.to_dict() | {"format": CONDITIONAL_FORMAT, "condition": condition, "pack": pack}
    )
    Recipe(spec, plain.vectors, directions).save(Path(out))
    return {"recipe": out, "layers": plain.layers}


def verify(variant: str, full: bool = False) -> dict:
    """`finsurg verify` of one variant: the layer-local proof, and the end-to-end check with `full`."""
    from finsurg import api
    from finsurg.settings import VerifySettings

    def run():
        report = api.verify(VerifySettings(variant=Path(variant), full=full, quiet=True)).report
        blocks = report.proof.blocks
        summary = {
            "passed": report.passed,
            "checks": report.checks,
            "note": report.end_to_end_note,
            "blocks": [b.layer for b in blocks],
            "block_max_error": max(b.max_abs_error or 0.0 for b in blocks),
            "structure": report.proof.structure.model_dump(),
        }
        if report.float32 is not None:
            summary["end_to_end"] = report.float32.model_dump()
        return summary

    return timed(run)


def family_route(family: str, out: str) -> dict:
    """A tiny random model of one family (the test suite's): export against a plain copy, then verify."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from finsurg import api
    from finsurg.settings import ExportSettings, VerifySettings

    from conftest import ROUTES, make_family_model, tiny_recipe

    root = Path(out)
    architecture, site = ROUTES[family]
    base = make_family_model(root / "base", family)
    recipe = tiny_recipe(root / "recipe", architecture=architecture, site=site)

    def copy_twice():
        for k in range(2):
            shutil.copytree(base, root / f"copy-{k}")

    copy = timed(copy_twice)
    settings = ExportSettings(
        model=str(base), recipe=str(recipe.source_dir), alpha=3.0, out=root / "out", verify=False, quiet=True
    )
    export = timed(lambda: {"variants": len(api.export(settings).variants)})
    steered = root / "out" / "steered"
    report = api.verify(VerifySettings(variant=steered, quiet=True)).report
    figures = {"architecture": architecture, "site": site, "copy_both_seconds": copy["seconds"]}
    figures["export_both_seconds"] = export["seconds"]
    figures["float32"] = report.float32.model_dump()
    figures["proof_passed"] = report.proof.passed
    if os.environ.get("FINSURG_VLLM_PYTHON"):
        served = api.verify(VerifySettings(variant=steered, engine="vllm", tokens=32, quiet=True)).report
        figures["vllm"] = {
            "vs_hooks": served.vs_hooks.model_dump(),
            "vs_transformers": served.vs_transformers.model_dump(),
            "passed": served.passed,
        }
    return figures


def export_naive(model: str, recipe: str, out: str) -> dict:
    """The route without finsurg's exporter: load the model, set the biases, save_pretrained."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from finsurg.models.source import resolve_model
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
        for path in sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else [Path(source)]:
            shutil.copyfile(path, Path(out) / path.name)

    return timed(run)


def gguf_export(variant: str, out: str, kind: str) -> dict:
    """`finsurg gguf` of one variant: the base GGUF streamed, plus the ffn_down biases."""
    from finsurg import api
    from finsurg.settings import GgufSettings

    settings = GgufSettings(variant=Path(variant), out=Path(out), gguf_type=kind, quiet=True)
    return timed(lambda: {"bytes": api.gguf(settings).written["bytes"]})


def make_synthetic(out: str, shards: int = 4) -> dict:
    """Random bf16 weights with Llama-3.1-8B's exact shapes, written tensor by tensor in slices."""
    import torch

    from finsurg.io.safetensors_io import Entry, write_safetensors

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
        # the default model's tokenizer (its ids fit this vocabulary): verification needs one
        from finsurg.models.source import resolve_model

        for path in resolve_model(None).path.iterdir():
            if path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copyfile(path, directory / path.name)
        return {"bytes": sum(p.stat().st_size for p in directory.glob("*.safetensors"))}

    return timed(run)


# ---- inference cost of steering ----------------------------------------------------------------
def generation_speed(base: str, variant: str, rounds: int = 5, new_tokens: int = 64) -> dict:
    """Greedy tokens/s, batch 1: base and baked with plain transformers, TransformerLens hooks, torch hooks."""
    import torch

    from finsurg.models.bridge import boot_bridge, greedy
    from finsurg.models.loading import encode, hf_greedy, load_model, load_tokenizer
    from finsurg.packs import Pack
    from finsurg.steer.arch import by_name
    from finsurg.steer.hooks import offset_hooks, offsets_added
    from finsurg.variant.directory import Variant

    torch.manual_seed(0)
    record = Variant(Path(variant))
    arch = by_name(record.record.base_model.architecture)
    tokenizer = load_tokenizer(Path(base))
    prompts = [encode(tokenizer, text) for text in Pack.load(record.record.recipe.pack).verification_prompts()[:3]]
    base_model, baked_model = load_model(Path(base)), load_model(Path(variant))
    hooked_source = load_model(Path(base))
    bridge = boot_bridge(Path(base), hooked_source, tokenizer)
    tl_hooks = offset_hooks(record.surgery, arch, base_model.config.to_dict())
    torch_model = load_model(Path(base))

    def torch_hooked(ids):
        with offsets_added(torch_model, record.surgery, arch):
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
    from finsurg.analysis.batching import padded
    from finsurg.models.bridge import boot_bridge
    from finsurg.models.loading import load_model, load_tokenizer, prompt_ids
    from finsurg.models.source import resolve_model
    from finsurg.packs import Pack

    model = resolve_model(None)
    arch = model.arch
    tokenizer = load_tokenizer(model.path)
    bridge = boot_bridge(model.path, load_model(model.path), tokenizer)
    prompts = Pack.load()
    keywords = keyword_ids(tokenizer, prompts.manifest.keywords)
    sequences = [prompt_ids(tokenizer, t) for c in prompts.categories for t in c.train]

    def run():
        collect(bridge, arch, padded(tokenizer, sequences, batch_size), "last", keywords)
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


# ---- steering efficacy at matched cost --------------------------------------------------------
def _scale_for_kl(measure, offsets_at, target: float, start: float = 1.0) -> tuple[float, float]:
    """The scale whose cost on neutral replies is `target`: KL grows about as its square; three refinements."""
    scale, kl = start, measure.kl(offsets_at(start))
    for _ in range(3):
        scale *= (target / max(kl, 1e-12)) ** 0.5
        kl = measure.kl(offsets_at(scale))
    return scale, kl


def steering_compare(recipe: str, repeng: str, targets: list[float]) -> dict:
    """Held-out log-odds shifts of finsurg's tuned recipe and of repeng's vector, each at matched KL,
    and of the pack's system prompts; every figure on the held-out split."""
    import torch
    from safetensors.torch import load_file

    from finsurg import progress
    from finsurg.analysis.behaviour import reply_split
    from finsurg.analysis.measures import Batches, Measure, answer_items, margins, reply_items
    from finsurg.effects import effect, preference
    from finsurg.models.loading import load_model, load_tokenizer
    from finsurg.models.source import resolve_model
    from finsurg.packs import Pack
    from finsurg.steer.recipe import Recipe
    from finsurg.steer.surgery import Surgery

    progress.set_enabled(False)
    model = resolve_model(None)
    arch = model.arch
    tokenizer = load_tokenizer(model.path)
    hf = load_model(model.path)
    pack = Pack.load()
    splits, (_, replies) = pack.answer_pairs(), reply_split(pack.neutral_reply_items())
    measure = Measure(hf, tokenizer, arch, splits.heldout, replies)
    tuned = Recipe.load(recipe)
    vectors = {int(name.split(".")[1]): v for name, v in load_file(repeng).items()}
    routes = {
        "finsurg (tuned recipe, alpha)": (tuned.surgery, 3.0),
        "repeng pca_center (coefficient)": (lambda c: Surgery.of({layer: c * v for layer, v in vectors.items()}), 1.0),
    }
    rows = []
    for name, (offsets_at, start) in routes.items():
        for target in targets:
            scale, kl_up = _scale_for_kl(measure, offsets_at, target, start)
            up, down = measure.shifts(offsets_at(scale)), measure.shifts(offsets_at(-scale))
            rows.append(
                {
                    "route": name,
                    "target_kl": target,
                    "scale": scale,
                    "kl_up": kl_up,
                    "kl_down": measure.kl(offsets_at(-scale)),
                    "up": effect(up, 1.0).model_dump(),
                    "down": effect(down, -1.0).model_dump(),
                }
            )
    base = measure.base_margins
    prompts = {}
    for name, sign, system in (
        ("positive", 1.0, pack.manifest.system_prompts.positive),
        ("negative", -1.0, pack.manifest.system_prompts.negative),
    ):
        after = margins(Batches(hf, tokenizer, arch, answer_items(tokenizer, splits.heldout, system)).base)
        prompted = Batches(hf, tokenizer, arch, reply_items(tokenizer, replies, system), distributions=True).base
        kl = sum(
            float(torch.nn.functional.kl_div(p, b, log_target=True, reduction="sum"))
            for b, p in zip(measure.base_neutral, prompted)
        ) / sum(b.shape[0] for b in measure.base_neutral)
        prompts[name] = {
            "system_prompt": system,
            "shift": effect([a - b for a, b in zip(after, base)], sign).model_dump(),
            "preference": preference(after),
            "kl": kl,
        }
    return {
        "rows": rows,
        "prompts": prompts,
        "base_preference": preference(base),
        "heldout": len(splits.heldout),
        "neutral_replies": len(replies),
    }


def repeng_train(python: str, out: str) -> dict:
    """repeng's own training, in its own environment, on the pack's train split."""
    import subprocess

    from finsurg.models.source import resolve_model
    from finsurg.packs import Pack

    pack = Pack.load()
    done = subprocess.run(
        [
            python,
            str(Path(__file__).with_name("repeng_train.py")),
            str(resolve_model(None).path),
            str(pack.directory / pack.manifest.answers),
            out,
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def analyze_tuned(out: str) -> dict:
    """`finsurg analyze` with tuning (the default), as a user runs it."""
    import subprocess

    def run():
        done = subprocess.run(
            [sys.executable, "-m", "finsurg", "analyze", "--out", out, "--overwrite", "--quiet", "--json"],
            check=True,
            capture_output=True,
            text=True,
        )
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        behaviour = json.loads(done.stdout)["behaviour"]
        return {"child_peak_rss_mb": usage.ru_maxrss / 1024, "behaviour": behaviour}

    return timed(run)


def export_eval(recipe: str, out: str) -> dict:
    """Export the tuned variants and run finsurg eval (lm-eval) on them: capability cost beside the shift."""
    import subprocess

    subprocess.run(
        [sys.executable, "-m", "finsurg", "export", "--recipe", recipe, "--out", out, "--no-verify", "--quiet"],
        check=True,
        capture_output=True,
    )
    done = subprocess.run(
        [sys.executable, "-m", "finsurg", "eval", out, "--quiet", "--json"], capture_output=True, text=True
    )
    return json.loads(done.stdout)


# ---- compliance monitor -------------------------------------------------------------------------
def monitor_build(out: str, tiny: bool = False) -> dict:
    """`finsurg monitor export` of the default model's preset, or of a tiny random Llama with a chat template."""
    from finsurg import api
    from finsurg.settings import MonitorExportSettings

    root = Path(out)
    settings = MonitorExportSettings(out=root / "monitor", device="cpu", quiet=True)
    if tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import make_tiny_llama, tiny_recipe, with_template

        model = with_template(make_tiny_llama(root / "base"))
        recipe = tiny_recipe(root / "recipe")
        settings = settings.model_copy(update={"model": str(model), "recipe": str(recipe.source_dir)})
    built = {}

    def build():
        built["spec"] = api.monitor_export(settings).spec

    figures = timed(build)
    return figures | {"spec": built["spec"].model_dump(mode="json"), "cost": built["spec"].cost}


def monitor_cost(monitor: str, conversations: int = 64, batch_size: int = 16, rounds: int = 3) -> dict:
    """Seconds per scored conversation: the monitor against a full forward of its base (float32, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from finsurg.models.source import resolve_model
    from finsurg.monitor.labelled import labelled
    from finsurg.packs import Pack

    tokenizer = AutoTokenizer.from_pretrained(monitor)
    heldout = labelled(Pack.load("finance"), "heldout", tokenizer)
    texts = (heldout["topic"][0] + heldout["topic"][1])[:conversations]
    batches = [
        tokenizer(texts[i : i + batch_size], padding=True, return_tensors="pt")
        for i in range(0, len(texts), batch_size)
    ]
    models = {
        "monitor": AutoModelForSequenceClassification.from_pretrained(monitor, dtype=torch.float32).eval(),
        "base": AutoModelForCausalLM.from_pretrained(resolve_model(None).path, dtype=torch.float32).eval(),
    }
    seconds = {}
    for name, model in models.items():
        runs = []
        for _ in range(rounds + 1):  # the first is a warm-up
            clock = time.perf_counter()
            with torch.inference_mode():
                for batch in batches:
                    model(**batch, use_cache=False) if name == "base" else model(**batch)
            runs.append((time.perf_counter() - clock) / len(texts))
        seconds[name] = statistics.median(runs[1:])
    return {
        "seconds_per_conversation": seconds,
        "ratio": seconds["monitor"] / seconds["base"],
        "conversations": len(texts),
    }


def monitor_score(monitor: str, lines: int, out: str, before: float = 0.1, after: float = 0.3) -> dict:
    """`finsurg monitor score` of a planted log of `lines` conversations, in this process; then `monitor drift`
    of its scores in windows of a tenth of the log against the first fifth."""
    from finsurg import api
    from finsurg.monitor.synthetic import planted_log  # the planted log is the benchmark's input, not a command
    from finsurg.packs import Pack
    from finsurg.settings import MonitorDriftSettings, MonitorScoreSettings

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    log = planted_log(root / "chats.jsonl", Pack.load("finance"), lines, before, after)
    scores = root / "scores.jsonl"
    summary = api.monitor_score(
        MonitorScoreSettings(log=log, monitor=Path(monitor), out=scores, device="cpu", quiet=True)
    ).summary
    drift = MonitorDriftSettings(
        scored=scores, window=str(lines // 10), reference=str(lines // 5), out=root / "drift", quiet=True
    )
    report = api.monitor_drift(drift).report
    alarms = [alarm.first_line for alarm in report.alarms if alarm.label == "behaviour"]
    return {
        "lines": lines,
        "seconds": summary.seconds,
        "per_second": summary.per_second,
        "scored": summary.scored,
        "drift": {
            "before": before,
            "after": after,
            "shift_line": lines // 2 + 1,
            "window": lines // 10,
            "first_behaviour_alarm_line": min(alarms, default=None),
            "alarms": [alarm.model_dump() for alarm in report.alarms],
            "behaviour_flagged_share": [row.labels["behaviour"].flagged_share for row in report.windows],
        },
    }


def monitor_long(monitor: str, out: str, budget: int = 512, turns: int = 12) -> dict:
    """The monitor's held-out AUROC on its short conversations, and on the same conversations padded in front with
    `turns` earlier off-topic exchanges (the train split's) and scored within a token budget of `budget`, which
    keeps their ends; then `monitor score` on a log with one conversation 2.5 times the default model's context."""
    from sklearn.metrics import roc_auc_score
    from transformers import AutoTokenizer

    from finsurg import api
    from finsurg.monitor.conversations import exchange
    from finsurg.packs import Pack
    from finsurg.settings import MonitorScoreSettings

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    pack = Pack.load("finance")
    pairs, off = pack.answer_pairs().heldout, pack.off_topic_splits()
    earlier = [turn for item in off.train[:turns] for turn in exchange(item.question, item.reply)]
    sets = {
        "topic": (
            [exchange(p.question, a) for p in pairs for a in (p.positive, p.negative)],
            [exchange(item.question, item.reply) for item in off.heldout],
        ),
        "behaviour": (
            [exchange(p.question, p.positive) for p in pairs],
            [exchange(p.question, p.negative) for p in pairs] + [exchange(i.question, i.reply) for i in off.heldout],
        ),
    }
    figures = {}
    tokenizer = AutoTokenizer.from_pretrained(monitor)
    for name, prefix in (("short", []), ("padded", earlier)):
        rows = [
            (label, side, prefix + messages)
            for label, (positives, negatives) in sets.items()
            for side, group in ((1, positives), (0, negatives))
            for messages in group
        ]
        log = root / f"{name}.jsonl"
        log.write_text("".join(json.dumps({"messages": messages}) + "\n" for _, _, messages in rows))
        lengths = [len(tokenizer(tokenizer.apply_chat_template(m, tokenize=False))["input_ids"]) for _, _, m in rows]
        settings = MonitorScoreSettings(log=log, monitor=Path(monitor), out=root / f"{name}.scores.jsonl", quiet=True)
        summary = api.monitor_score(settings.model_copy(update={"max_tokens": budget})).summary
        scores = [json.loads(line)["logits"] for line in (root / f"{name}.scores.jsonl").read_text().splitlines()]
        figures[name] = {
            "median_tokens": statistics.median(lengths),
            "truncated": len(summary.truncated),
            "auroc": {
                label: roc_auc_score(
                    [side for lb, side, _ in rows if lb == label],
                    [score[label] for (lb, _, _), score in zip(rows, scores) if lb == label],
                )
                for label in sets
            },
        }
    figures["budget"] = budget
    figures["long_log"] = _one_long_conversation(monitor, root, pack, tokenizer)
    return figures


def _one_long_conversation(monitor: str, root: Path, pack, tokenizer) -> dict:
    """`monitor score` at its default budget (the monitor's context) on 11 lines, one of them about 2.5 times that
    context: its time, peak RSS and the warning it prints."""
    from finsurg.monitor.conversations import exchange

    context = json.loads((Path(monitor) / "config.json").read_text())["max_position_embeddings"]
    off = pack.off_topic_splits().train
    messages: list[dict] = []
    while (
        not messages
        or len(tokenizer(tokenizer.apply_chat_template(messages, tokenize=False))["input_ids"]) < 2.5 * context
    ):
        item = off[len(messages) // 2 % len(off)]
        messages += exchange(item.question, item.reply)
    pair = pack.answer_pairs().heldout[0]
    messages += exchange(pair.question, pair.positive)
    short = [exchange(p.question, p.negative) for p in pack.answer_pairs().heldout[1:11]]
    log = root / "long.jsonl"
    log.write_text("".join(json.dumps({"messages": m}) + "\n" for m in [messages] + short))
    done = subprocess.run(
        [sys.executable, "-m", "finsurg", "monitor", "score", "--monitor", monitor, str(log), "--json", "--quiet"],
        capture_output=True,
        text=True,
    )
    summary = json.loads(done.stdout)
    return {
        "lines": 11,
        "tokens": len(tokenizer(tokenizer.apply_chat_template(messages, tokenize=False))["input_ids"]),
        "context": context,
        "seconds": summary["seconds"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "warning": [line for line in done.stderr.splitlines() if "warning" in line],
    }


TASKS = {
    f.__name__: f
    for f in (
        monitor_long,
        monitor_build,
        monitor_cost,
        monitor_score,
        conditional_recipe,
        export_stream,
        verify,
        family_route,
        gguf_export,
        export_naive,
        plain_copy,
        make_synthetic,
        generation_speed,
        analysis_phase1,
        analyze_cli,
        steering_compare,
        repeng_train,
        analyze_tuned,
        export_eval,
    )
}

if __name__ == "__main__":
    outcome = TASKS[sys.argv[1]](**json.loads(sys.argv[2]))
    outcome["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(outcome))
