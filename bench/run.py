"""`make bench`: finsurg's costs against their baselines, measured in one run.

Writes bench/results.json and bench/results.md. Every figure is paired with its baseline from
the same run and quoted as a ratio. The synthetic 8B-shaped checkpoint (about 16 GB) is cached
in bench/cache/; outputs are deleted after each measurement.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
SYNTHETIC = CACHE / "llama-3.1-8b-shapes-bf16"
REPEATS = 3
TARGETS = {
    "export_speedup_vs_naive": 5.0,
    "export_8b_peak_rss_mb": 2048.0,
    "export_8b_time_vs_copy": 1.5,
    "baked_slowdown_vs_base": 0.02,
}


def task(name: str, env: dict | None = None, **kwargs) -> dict:
    """Run one measurement in a fresh process (with `env` added to the environment); return its JSON."""
    done = subprocess.run(
        [sys.executable, str(HERE / "tasks.py"), name, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise SystemExit(f"bench task {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda run: run["seconds"])
    return ordered[len(ordered) // 2] | {"all_seconds": [round(run["seconds"], 3) for run in runs]}


def flush() -> None:
    """Write dirty pages out, so one measurement's writeback is not billed to the next."""
    os.sync()
    time.sleep(1)


def scratch_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=parent))


def measure_export_default(results: dict) -> None:
    from finsurg.models.source import resolve_model

    base = resolve_model(None).path
    runs: dict[str, list[dict]] = {"naive": [], "copy": [], "auto": []}
    for _ in range(REPEATS):  # interleaved; the median of each
        for name in runs:
            work = scratch_dir(CACHE)
            try:
                if name == "naive":
                    runs[name].append(
                        task(
                            "export_naive",
                            model="smollm2-135m",
                            recipe="smollm2-135m-unconditional",
                            out=str(work / "out"),
                        )
                    )
                else:
                    runs[name].append(
                        task(
                            "export_stream",
                            model="smollm2-135m",
                            recipe="smollm2-135m-unconditional",  # the naive route cannot graft
                            out=str(work / "out"),
                            link=name,
                        )
                    )
            finally:
                shutil.rmtree(work)
            flush()
    naive, stream, auto = (median_run(runs[name]) for name in ("naive", "copy", "auto"))
    results["export_default_model"] = {
        "model": str(base),
        "what": f"both variants (steered and conservative), no verification; median of {REPEATS} runs",
        "naive_load_set_save": naive,
        "finsurg_export_copy": stream,
        "finsurg_export_link_auto": auto,
        "speedup_vs_naive": naive["seconds"] / stream["seconds"],
        "rss_ratio_vs_naive": stream["peak_rss_mb"] / naive["peak_rss_mb"],
        "link_auto_speedup_vs_copy": stream["seconds"] / auto["seconds"],
    }
    results["export_default_model"]["reflink"] = measure_reflink(base)


def measure_reflink(base: Path) -> dict:
    """The link mode on a copy-on-write filesystem: an XFS image on a loop device, where root may mount one."""
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        return {"available": False, "why": "needs root and mkfs.xfs to mount an XFS (reflink) image"}
    image, mount = CACHE / "xfs.img", CACHE / "xfs"
    mount.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["truncate", "-s", "3G", str(image)], check=True)
        subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        image.unlink(missing_ok=True)
        return {"available": False, "why": f"could not mount an XFS image: {exc}"}
    try:
        shutil.copytree(base, mount / "base")
        copy = task("export_stream", model=str(mount / "base"), recipe="smollm2-135m", out=str(mount / "copy"))
        shutil.rmtree(mount / "copy")
        flush()
        linked = task(
            "export_stream", model=str(mount / "base"), recipe="smollm2-135m", out=str(mount / "linked"), link="auto"
        )
        return {
            "available": True,
            "filesystem": "xfs (loop image)",
            "copy": copy,
            "link_auto": linked,
            "speedup_vs_copy": copy["seconds"] / linked["seconds"],
        }
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        image.unlink(missing_ok=True)


def measure_export_8b(results: dict) -> None:
    if not (SYNTHETIC / "config.json").is_file():
        shutil.rmtree(SYNTHETIC, ignore_errors=True)
        made = task("make_synthetic", out=str(SYNTHETIC))
        results["synthetic_generation"] = made
    size = sum(p.stat().st_size for p in SYNTHETIC.glob("*.safetensors"))
    work = scratch_dir(CACHE)
    try:
        flush()
        copy = task("plain_copy", source=str(SYNTHETIC), out=str(work / "copy"))
        shutil.rmtree(work / "copy")
        flush()
        home = {"FINSURG_HOME": str(work / "home")}  # a cold hash cache: the first export hashes every shard
        exports = []
        for _ in range(2):  # the second finds every shard's hash in the cache
            out = str(work / "export")
            exports.append(
                task("export_stream", env=home, model=str(SYNTHETIC), recipe="llama-3.1-8b", out=out, variants="one")
            )
            shutil.rmtree(work / "export")
            flush()
        export, second = exports
        copy_again = task("plain_copy", source=str(SYNTHETIC), out=str(work / "copy"))
    finally:
        shutil.rmtree(work)
    copy_seconds = min(copy["seconds"], copy_again["seconds"])
    results["export_8b_shapes"] = {
        "checkpoint": str(SYNTHETIC),
        "bytes": size,
        "what": "one variant (steered, the seed recipe at alpha 3) against a plain copy of the same shards",
        "plain_copy": [copy, copy_again],
        "finsurg_export": export,
        "time_vs_copy": export["seconds"] / copy_seconds,
        "second_export": second,
        "second_time_vs_copy": second["seconds"] / copy_seconds,
        "export_gb_per_second": size / export["seconds"] / 1e9,
        "copy_gb_per_second": size / copy_seconds / 1e9,
    }


def measure_verify_8b(results: dict) -> None:
    """Both variants with default verification against --no-verify; verify alone, default and --full."""
    if not (SYNTHETIC / "config.json").is_file():
        measure_export_8b(results)  # it generates the synthetic checkpoint
    work = scratch_dir(CACHE)
    home = {"FINSURG_HOME": str(work / "home")}  # warmed by the first run, so both measured runs hash nothing
    try:
        for _ in range(2):
            flush()
            plain = task(
                "export_stream", env=home, model=str(SYNTHETIC), recipe="llama-3.1-8b", out=str(work / "plain")
            )
            shutil.rmtree(work / "plain")
        flush()
        verified = task(
            "export_stream",
            env=home,
            model=str(SYNTHETIC),
            recipe="llama-3.1-8b",
            out=str(work / "out"),
            verify=True,
        )
        flush()
        proof = task("verify", variant=str(work / "out" / "steered"))
        flush()
        full = task("verify", variant=str(work / "out" / "steered"), full=True)
    finally:
        shutil.rmtree(work)
    results["verify_8b_shapes"] = {
        "export_no_verify": plain,
        "export_verified": verified,
        "export_time_vs_no_verify": verified["seconds"] / plain["seconds"],
        "verify_default": proof,
        "verify_full": full,
    }


def measure_graft_8b(results: dict) -> None:
    """Both variants of a conditional recipe (every layer's MLP rewritten, grown by the graft), verified, against
    a plain copy of the same shards."""
    if not (SYNTHETIC / "config.json").is_file():
        measure_export_8b(results)
    work = scratch_dir(CACHE)
    home = {"FINSURG_HOME": str(work / "home")}
    try:
        task("conditional_recipe", recipe="llama-3.1-8b", out=str(work / "recipe"))
        task("conditional_recipe", recipe="llama-3.1-8b", out=str(work / "medical"), pack="medical", seed=1)
        flush()
        copy = task("plain_copy", source=str(SYNTHETIC), out=str(work / "copy"))
        shutil.rmtree(work / "copy")
        flush()
        runs = {}
        bundled = {"verify": True, "bundled": str(work / "medical")}
        for name, how in (
            ("one", {"variants": "one"}),
            ("both_no_verify", {}),
            ("both", {"verify": True}),
            ("bundle", bundled),
        ):
            recipe, out = str(work / "recipe"), str(work / name)
            runs[name] = task("export_stream", env=home, model=str(SYNTHETIC), recipe=recipe, out=out, **how)
            shutil.rmtree(work / name)
            flush()
        one, plain, verified, bundle = runs["one"], runs["both_no_verify"], runs["both"], runs["bundle"]
    finally:
        shutil.rmtree(work)
    results["graft_8b_shapes"] = {
        "what": "a conditional recipe (layers 25-30 gated, every layer's MLP grown by 32 neurons) against a plain copy",
        "plain_copy": copy,
        "one_variant": one,
        "one_variant_time_vs_copy": one["seconds"] / copy["seconds"],
        "both_verified": verified,
        "both_verified_time_vs_copy": verified["seconds"] / copy["seconds"],
        "both_no_verify": plain,
        "both_verified_time_vs_no_verify": verified["seconds"] / plain["seconds"],
        "bundle_verified": bundle,
        "bundle_time_vs_single": bundle["seconds"] / verified["seconds"],
    }


def render_graft_8b(g: dict) -> list[str]:
    one, both, copy = g["one_variant"], g["both_verified"], g["plain_copy"]
    return [
        "## Conditional surgery at 8B shapes (every layer's MLP grown by the graft)",
        "",
        f"{g['what']}.",
        "",
        "| figure | finsurg | baseline (plain copy, same run) | ratio |",
        "|---|---|---|---|",
        f"| one variant, no verification: wall time | {one['seconds']:.1f} s | {copy['seconds']:.1f} s | "
        f"{g['one_variant_time_vs_copy']:.2f}× |",
        f"| both variants, verified: wall time | {both['seconds']:.1f} s | {copy['seconds']:.1f} s | "
        f"{g['both_verified_time_vs_copy']:.2f}× |",
        *(
            [
                f"| both variants, verified: wall time | {both['seconds']:.1f} s | both with --no-verify "
                f"{g['both_no_verify']['seconds']:.1f} s | {g['both_verified_time_vs_no_verify']:.2f}× (target ≤ 1.2×) |"
            ]
            if "both_no_verify" in g
            else []
        ),
        f"| peak RSS, one variant / both verified | {one['peak_rss_mb']:.0f} / {both['peak_rss_mb']:.0f} MB | "
        f"{copy['peak_rss_mb']:.0f} MB | |",
        *(
            [
                f"| a bundle of two conditional recipes (finance layers 25-30 + medical, same layers), both variants "
                f"verified: wall time | {g['bundle_verified']['seconds']:.1f} s | the single recipe, both verified "
                f"{both['seconds']:.1f} s | {g['bundle_time_vs_single']:.2f}× (target ≤ 1.1×) |"
            ]
            if "bundle_verified" in g
            else []
        ),
    ]


def measure_gguf(results: dict) -> None:
    """`finsurg gguf` on the default model's steered variant against a plain copy of its base GGUF."""
    from finsurg.models.source import _default_model_gguf

    base = _default_model_gguf()
    work = scratch_dir(CACHE)
    try:
        task("export_stream", model="smollm2-135m", recipe="smollm2-135m", out=str(work / "variants"))
        runs = {"copy": [], "keep": [], "f32": []}
        for k in range(REPEATS):
            runs["copy"].append(task("plain_copy", source=str(base), out=str(work / f"copy-{k}")))
            for kind in ("keep", "f32"):
                out = work / f"{kind}-{k}.gguf"
                runs[kind].append(
                    task("gguf_export", variant=str(work / "variants" / "steered"), out=str(out), kind=kind)
                )
    finally:
        shutil.rmtree(work)
    copy = median_run(runs["copy"])
    results["gguf_default_model"] = {
        "base_gguf_bytes": base.stat().st_size,
        "plain_copy": copy,
        "keep": median_run(runs["keep"]),
        "f32": median_run(runs["f32"]),
        "keep_vs_copy": median_run(runs["keep"])["seconds"] / copy["seconds"],
    }


def measure_families(results: dict) -> None:
    """Each family's exact route on a tiny random model: export time against a copy, figures against hooks."""
    families = {}
    for family in ("granite", "qwen3", "qwen2", "mistral"):
        work = scratch_dir(CACHE)
        try:
            families[family] = task("family_route", family=family, out=str(work))
        finally:
            shutil.rmtree(work)
    results["families"] = families


def render_families(families: dict) -> list[str]:
    lines = [
        "## Families (tiny random models, both variants)",
        "",
        "| family | site | export / plain copy of the base, twice | fp32 max abs Δlogit vs hooks | KL max | greedy "
        "| vLLM vs hooks |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in families.values():
        exact = f["float32"]
        vllm = f.get("vllm")
        served = (
            f"{vllm['vs_hooks']['tokens_matching']}/{vllm['vs_hooks']['tokens_total']} tokens"
            if vllm
            else "not measured"
        )
        lines.append(
            f"| {f['architecture']} | {f['site']} | {f['export_both_seconds'] * 1e3:.1f} ms / "
            f"{f['copy_both_seconds'] * 1e3:.1f} ms ({f['export_both_seconds'] / f['copy_both_seconds']:.1f}×) "
            f"| {exact['max_abs_logit_diff']:.2e} | {exact['kl_max']:.1e} | {exact['greedy_prompts_identical']}/6 "
            f"| {served} |"
        )
    return lines


def measure_inference(results: dict) -> None:
    from finsurg.models.source import resolve_model

    base = resolve_model(None).path
    work = scratch_dir(CACHE)
    try:
        task("export_stream", model="smollm2-135m", recipe="smollm2-135m", out=str(work / "v"))
        speed = task("generation_speed", base=str(base), variant=str(work / "v" / "steered"))
    finally:
        shutil.rmtree(work)
    rates = speed["tokens_per_second"]
    base_rate = rates["base (transformers)"]
    speed["slowdown_vs_base"] = {name: 1.0 - rate / base_rate for name, rate in rates.items()}
    results["inference"] = speed


def measure_analysis(results: dict) -> None:
    batched = task("analysis_phase1", batch_size=16)
    single = task("analysis_phase1", batch_size=1)
    work = scratch_dir(CACHE)
    try:
        whole = task("analyze_cli", out=str(work / "run"))
    finally:
        shutil.rmtree(work)
    results["analysis"] = {
        "phase1_batched_16": batched,
        "phase1_one_at_a_time": single,
        "batched_speedup": batched["prompts_per_second"] / single["prompts_per_second"],
        "finsurg_analyze_default_model": whole,
    }


def measure_monitor(results: dict) -> None:
    """The compliance monitor: its export, its cost per conversation against a full forward of the base, and
    `monitor score` throughput and peak RSS (the default model's on a short log; a tiny random monitor's at 10k
    and 100k lines, where only the streaming is measured)."""
    work = scratch_dir(CACHE)
    try:
        built = task("monitor_build", out=str(work / "default"))
        cost = task("monitor_cost", monitor=str(work / "default" / "monitor"))
        long = task("monitor_long", monitor=str(work / "default" / "monitor"), out=str(work / "long"))
        scored = task("monitor_score", monitor=str(work / "default" / "monitor"), lines=2000, out=str(work / "s"))
        flat = task(
            "monitor_score", monitor=str(work / "default" / "monitor"), lines=2000, out=str(work / "f"), after=0.1
        )
        task("monitor_build", out=str(work / "tiny"), tiny=True)
        streaming = {
            lines: task(
                "monitor_score", monitor=str(work / "tiny" / "monitor"), lines=lines, out=str(work / f"t{lines}")
            )
            for lines in (10_000, 100_000)
        }
    finally:
        shutil.rmtree(work)
    spec = built["spec"]
    results["monitor"] = {
        "export": {"seconds": built["seconds"], "peak_rss_mb": built["peak_rss_mb"], "layer": spec["layer"]},
        "heldout": spec["heldout"],
        "check_max_abs_diff": spec["check"]["max_abs_diff"],
        "cost": cost | {"target": built["cost"]},
        "score_default_model": scored,
        "score_default_model_flat": flat,
        "score_tiny": {str(lines): figures for lines, figures in streaming.items()},
        "long_conversations": long,
    }


def render_monitor(m: dict) -> list[str]:
    cost, score, tiny = m["cost"], m["score_default_model"], m["score_tiny"]
    seconds = cost["seconds_per_conversation"]
    return [
        "## Compliance monitor (default model, CPU)",
        "",
        "| measurement | monitor | baseline | ratio | target |",
        "|---|---|---|---|---|",
        f"| seconds per scored conversation (batch 16, float32) | {seconds['monitor'] * 1e3:.1f} ms | full forward of "
        f"the base {seconds['base'] * 1e3:.1f} ms | {cost['ratio']:.2f} | ≤ {cost['target']:.2f} (layer "
        f"{m['export']['layer']} + 1 of 30) |",
        f"| `monitor score`, {score['lines']} lines: throughput | {score['per_second']:.1f} conversations/s | — | — | — |",
        f"| `monitor score`, {score['lines']} lines: peak RSS | {score['peak_rss_mb']:.0f} MB | — | — | bounded |",
        f"| `monitor drift`, planted shift {score['drift']['before']:.0%} → {score['drift']['after']:.0%} at line "
        f"{score['drift']['shift_line']}, windows of {score['drift']['window']}: first `behaviour` alarm | line "
        f"{score['drift']['first_behaviour_alarm_line']} | no shift: "
        f"{len(m['score_default_model_flat']['drift']['alarms'])} alarms | — | within two windows; none |",
        f"| tiny random monitor, 100,000 lines: peak RSS | {tiny['100000']['peak_rss_mb']:.0f} MB | 10,000 lines "
        f"{tiny['10000']['peak_rss_mb']:.0f} MB | {tiny['100000']['peak_rss_mb'] / tiny['10000']['peak_rss_mb']:.2f}× | "
        "bounded (≈ 1×) |",
        f"| tiny random monitor, 100,000 lines: throughput | {tiny['100000']['per_second']:.0f} conversations/s | "
        f"10,000 lines {tiny['10000']['per_second']:.0f} | — | — |",
        "",
        f"`finsurg monitor export` on the default model: {m['export']['seconds']:.0f} s, peak RSS "
        f"{m['export']['peak_rss_mb']:.0f} MB; held-out AUROC topic {m['heldout']['topic']['auroc']:.3f}, behaviour "
        f"{m['heldout']['behaviour']['auroc']:.3f}; classifier against the hooked base max |Δlogit| "
        f"{m['check_max_abs_diff']:.1e}.",
        *render_long(m.get("long_conversations")),
    ]


def render_long(long: dict | None) -> list[str]:
    if not long:
        return []
    short, padded, one = long["short"], long["padded"], long["long_log"]
    return [
        "",
        f"Held-out AUROC on long conversations: each held-out conversation padded in front with earlier off-topic "
        f"exchanges (median {padded['median_tokens']:.0f} tokens against {short['median_tokens']:.0f}) and scored "
        f"within `--max-tokens {long['budget']}`, which keeps its end ({padded['truncated']} cut): topic "
        f"{padded['auroc']['topic']:.3f} (short {short['auroc']['topic']:.3f}), behaviour "
        f"{padded['auroc']['behaviour']:.3f} (short {short['auroc']['behaviour']:.3f}).",
        "",
        f"`monitor score` on {one['lines']} lines, one of them {one['tokens']:,} tokens ({one['tokens'] / one['context']:.1f}× "
        f"the context): {one['seconds']:.1f} s, peak RSS {one['peak_rss_mb']:.0f} MB; it warned "
        f"`{one['warning'][0] if one['warning'] else 'nothing'}`.",
    ]


def measure_steering(results: dict) -> None:
    """Answer-behaviour steering on held-out questions: finsurg tuned, repeng and system prompts, matched KL."""
    python = os.environ.get("FINSURG_REPENG_PYTHON")
    if not python:
        raise SystemExit("the steering benchmark needs repeng: run `make bench-setup` (sets FINSURG_REPENG_PYTHON)")
    work = scratch_dir(CACHE)
    run = CACHE / "steering-analysis"  # kept: the tuned recipe these figures belong to
    try:
        analysis = task("analyze_tuned", out=str(run))
        peer = task("repeng_train", python=python, out=str(work / "repeng.safetensors"))
        compare = task(
            "steering_compare", recipe=str(run), repeng=str(work / "repeng.safetensors"), targets=[0.05, 0.1]
        )
        evaluation = task("export_eval", recipe=str(run), out=str(work / "variants"))
    finally:
        shutil.rmtree(work)
    results["steering"] = {"analysis": analysis, "repeng_training": peer, "matched_kl": compare, "eval": evaluation}


def render_steering(steering: dict) -> list[str]:
    from finsurg.steer.finding_tables import heldout_table
    from finsurg.steer.findings import Findings

    analysis, compare, evaluation = steering["analysis"], steering["matched_kl"], steering["eval"]
    findings = Findings.model_validate(analysis["behaviour"])
    heldout, chosen = findings.heldout, findings.tuning.chosen
    lines = [
        "## Steering efficacy (default model, held-out questions)",
        "",
        f"`finsurg analyze` with tuning: {analysis['seconds']:.0f} s wall (target < 300 s), peak RSS "
        f"{analysis['child_peak_rss_mb']:.0f} MB. Chosen: trial {chosen.trial}, {chosen.method}, layers "
        f"{chosen.layers[0]}-{chosen.layers[1]}, KL {chosen.kl:.3f} on the tune split.",
        "",
        "At alpha ±3 (the tuned point), from the analysis:",
        "",
    ]
    lines += heldout_table(heldout)
    lines += [
        "",
        f"At matched cost (KL on {compare['neutral_replies']} neutral replies), {compare['heldout']} held-out questions; "
        "repeng trained as it ships on the same train split:",
        "",
        "| route | target KL | KL +/− | Δ up [95% CI] | wrong way up | Δ down [95% CI] | wrong way down |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in compare["rows"]:
        up, down = row["up"], row["down"]
        lines.append(
            f"| {row['route']} = {row['scale']:.3g} | {row['target_kl']:g} | {row['kl_up']:.3f} / {row['kl_down']:.3f} | "
            f"{up['mean']:+.2f} [{up['ci95'][0]:+.2f}, {up['ci95'][1]:+.2f}] | {up['wrong_way']:.0%} | "
            f"{down['mean']:+.2f} [{down['ci95'][0]:+.2f}, {down['ci95'][1]:+.2f}] | {down['wrong_way']:.0%} |"
        )
    for name, row in compare["prompts"].items():
        shift = row["shift"]
        lines.append(
            f"| {name} system prompt | — | {row['kl']:.3f} | "
            + (
                f"{shift['mean']:+.2f} [{shift['ci95'][0]:+.2f}, {shift['ci95'][1]:+.2f}] | {shift['wrong_way']:.0%} | — | — |"
                if name == "positive"
                else f"— | — | {shift['mean']:+.2f} [{shift['ci95'][0]:+.2f}, {shift['ci95'][1]:+.2f}] | {shift['wrong_way']:.0%} |"
            )
        )
    by = {(r["route"].split(" ")[0], r["target_kl"]): r for r in compare["rows"]}
    lines.append("")
    for target in sorted({r["target_kl"] for r in compare["rows"]}):
        ours, peer = by[("finsurg", target)], by[("repeng", target)]
        lines.append(
            f"- KL {target:g}: finsurg/repeng shift ratio {ours['up']['mean'] / peer['up']['mean']:.2f}× up, "
            f"{ours['down']['mean'] / peer['down']['mean']:.2f}× down (target ≥ 1.5×)."
        )
    metrics = evaluation["metrics"]
    base, general, prose = metrics["base"], "finsurg_general", "finsurg_prose"
    for name in ("steered", "conservative"):
        baked = metrics[f"{name}/baked"]
        lines.append(
            f"- {name}: general accuracy {baked[general]['acc']:.3f} vs base {base[general]['acc']:.3f} "
            f"({(baked[general]['acc'] - base[general]['acc']) * 100:+.1f} points, target within 2); neutral prose "
            f"perplexity {baked[prose]['word_perplexity']:.2f} vs {base[prose]['word_perplexity']:.2f} "
            f"({baked[prose]['word_perplexity'] / base[prose]['word_perplexity'] - 1:+.1%}, target within 5%)."
        )
    return lines + [""]


def render_verify_8b(v: dict) -> list[str]:
    plain, verified = v["export_no_verify"], v["export_verified"]
    proof, full = v["verify_default"], v["verify_full"]
    return [
        "## Verification at 8B shapes (16 GB bf16; the whole model in float32 does not fit this machine)",
        "",
        "| measurement | finsurg | baseline | ratio | target |",
        "|---|---|---|---|---|",
        f"| export, both variants, default verification (hash cache warm in both): wall time | "
        f"{verified['seconds']:.1f} s | --no-verify {plain['seconds']:.1f} s | {v['export_time_vs_no_verify']:.2f}× "
        "| ≤ 1.2× |",
        f"| export, both variants, default verification: peak RSS | {verified['peak_rss_mb']:.0f} MB | --no-verify "
        f"{plain['peak_rss_mb']:.0f} MB | — | < 4096 MB |",
        f"| verify one variant (checksums + layer-local proof, blocks {', '.join(map(str, proof['blocks']))}) | "
        f"{proof['seconds']:.1f} s, {proof['peak_rss_mb']:.0f} MB | — | — | < 30 s, < 4096 MB |",
        f"| verify --full one variant (layer-streamed end to end) | {full['seconds']:.1f} s, "
        f"{full['peak_rss_mb']:.0f} MB | — | — | completes, < 6144 MB |",
        "",
        f"Proof: block max error {proof['block_max_error']:.2e}, passed {proof['passed']}. Streamed end to end: "
        f"max |Δlogit| {full['end_to_end']['max_abs_logit_diff']:.2e}, KL max {full['end_to_end']['kl_max']:.2e}, "
        f"teacher-forced argmax agreement {full['end_to_end']['argmax_agreement']:.1%}, passed {full['passed']}.",
    ]


def render(results: dict) -> str:
    ex, big = results["export_default_model"], results["export_8b_shapes"]
    inf, an = results["inference"], results["analysis"]
    rates, slow = inf["tokens_per_second"], inf["slowdown_vs_base"]
    reflink = ex["reflink"]
    lines = [
        "# finsurg benchmarks",
        "",
        f"Machine: {results['machine']}. Measured {results['date']}. Each figure comes from a fresh process.",
        "",
        "## Export cost",
        "",
        "| measurement | finsurg | baseline | ratio | target |",
        "|---|---|---|---|---|",
        f"| default model, both variants: wall time | {ex['finsurg_export_copy']['seconds']:.2f} s | naive load/set/save "
        f"{ex['naive_load_set_save']['seconds']:.2f} s | {ex['speedup_vs_naive']:.1f}× faster | ≥ 5× |",
        f"| default model, both variants: peak RSS | {ex['finsurg_export_copy']['peak_rss_mb']:.0f} MB | naive "
        f"{ex['naive_load_set_save']['peak_rss_mb']:.0f} MB | {ex['rss_ratio_vs_naive']:.2f}× | — |",
        f"| default model, --link auto on this filesystem | {ex['finsurg_export_link_auto']['seconds']:.2f} s | "
        f"copy {ex['finsurg_export_copy']['seconds']:.2f} s | {ex['link_auto_speedup_vs_copy']:.2f}× | — |",
    ]
    if reflink["available"]:
        lines.append(
            f"| default model, --link auto on {reflink['filesystem']} | {reflink['link_auto']['seconds']:.2f} s | "
            f"copy {reflink['copy']['seconds']:.2f} s | {reflink['speedup_vs_copy']:.1f}× faster | — |"
        )
    lines += [
        f"| 8B shapes ({big['bytes'] / 1e9:.1f} GB bf16, 4 shards), one variant: wall time | "
        f"{big['finsurg_export']['seconds']:.1f} s | plain copy {min(c['seconds'] for c in big['plain_copy']):.1f} s | "
        f"{big['time_vs_copy']:.2f}× the copy | ≤ 1.5× |",
        f"| 8B shapes, one variant: peak RSS | {big['finsurg_export']['peak_rss_mb']:.0f} MB | plain copy "
        f"{big['plain_copy'][0]['peak_rss_mb']:.0f} MB | — | < 2048 MB |",
    ]
    if "second_export" in big:
        lines.append(
            f"| 8B shapes, one variant, second export of the same base (hash cache warm): wall time | "
            f"{big['second_export']['seconds']:.1f} s | plain copy {min(c['seconds'] for c in big['plain_copy']):.1f} s "
            f"| {big['second_time_vs_copy']:.2f}× the copy | ≤ 1.05× |"
        )
    if "verify_8b_shapes" in results:
        lines += [""] + render_verify_8b(results["verify_8b_shapes"])
    if "graft_8b_shapes" in results:
        lines += [""] + render_graft_8b(results["graft_8b_shapes"])
    if "families" in results:
        lines += [""] + render_families(results["families"])
    if "gguf_default_model" in results:
        g = results["gguf_default_model"]
        lines += [
            "",
            "## GGUF export (default model, Q4_1 base GGUF)",
            "",
            "| measurement | finsurg gguf | plain copy of the base GGUF | ratio |",
            "|---|---|---|---|",
            f"| --type keep (quantized blocks copied byte for byte) | {g['keep']['seconds']:.2f} s | "
            f"{g['plain_copy']['seconds']:.2f} s | {g['keep_vs_copy']:.2f}× (includes hashing the variant and the base GGUF) |",
            f"| --type f32 (dequantized, {g['f32']['bytes'] / 1e6:.0f} MB) | {g['f32']['seconds']:.2f} s | — | — |",
        ]
    lines += [
        "",
        "## Inference cost of steering (greedy, batch 1, default model)",
        "",
        "| route | tokens/s (median) | vs base | target |",
        "|---|---|---|---|",
    ]
    for name, rate in rates.items():
        target = "within 2%" if name.startswith("baked") else "—"
        lines.append(f"| {name} | {rate:.1f} | {-slow[name]:+.1%} | {target} |")
    lines += [
        "",
        "## Analysis throughput (default model)",
        "",
        "| measurement | batched (16) | one at a time | ratio |",
        "|---|---|---|---|",
        f"| phase 1 (activations + head attention), prompts/s | {an['phase1_batched_16']['prompts_per_second']:.1f} | "
        f"{an['phase1_one_at_a_time']['prompts_per_second']:.1f} | {an['batched_speedup']:.1f}× |",
        f"| phase 1, peak RSS | {an['phase1_batched_16']['peak_rss_mb']:.0f} MB | "
        f"{an['phase1_one_at_a_time']['peak_rss_mb']:.0f} MB | — |",
        "",
        f"`finsurg analyze` on the default model (all phases and the 7-point alpha sweep): "
        f"{an['finsurg_analyze_default_model']['seconds']:.1f} s wall, peak RSS "
        f"{an['finsurg_analyze_default_model']['child_peak_rss_mb']:.0f} MB.",
        "",
    ]
    if not reflink["available"]:
        lines.append(f"Reflink on a copy-on-write filesystem: not measured ({reflink['why']}).")
    if "steering" in results:
        lines += [""] + render_steering(results["steering"])
    if "monitor" in results:
        lines += [""] + render_monitor(results["monitor"])
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "targets": TARGETS,
    }
    steps = [
        measure_export_default,
        measure_export_8b,
        measure_verify_8b,
        measure_graft_8b,
        measure_gguf,
        measure_families,
        measure_inference,
        measure_analysis,
        measure_steering,
        measure_monitor,
    ]
    only = sys.argv[1:]  # e.g. `bench/run.py steering`: re-measure some sections, keep the others' last figures
    if only == ["render"]:  # re-render results.md from results.json
        (HERE / "results.md").write_text(render(json.loads((HERE / "results.json").read_text())))
        return
    if only and (HERE / "results.json").is_file():
        results = json.loads((HERE / "results.json").read_text()) | {k: results[k] for k in ("date", "machine")}
    for step in steps:
        if only and step.__name__.removeprefix("measure_") not in only:
            continue
        print(f"bench: {step.__name__.removeprefix('measure_')}", flush=True)
        step(results)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "results.md").write_text(render(results))
    print((HERE / "results.md").read_text())


if __name__ == "__main__":
    main()
