"""`monitor score` on a GPU: `python bench/monitor_gpu.py BASE_FILES` on a CUDA machine writes
bench/monitor_gpu.json.

BASE_FILES holds the default model's config.json and tokenizer files (the weights need not travel): a random
base of that shape is built, its monitor is exported on CUDA (checked against the hooked base in float32), and
planted logs of 10,000 and 100,000 lines are scored on CUDA with the transformers engine, each in a fresh
process, for throughput and peak RSS. Throughput depends on shapes, not on weights."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(os.environ.get("OUT", Path(__file__).resolve().parent))
work = Path(tempfile.gettempdir()) / "finsurg-monitor-gpu"
work.mkdir(exist_ok=True)
FILES = Path(sys.argv[1])
step = sys.argv[2] if len(sys.argv) > 2 else "all"
DEV = os.environ.get("DEV", "cuda")
SIZES = [int(n) for n in os.environ.get("SIZES", "10000,100000").split(",")]


def build():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from finsurg import api
    from finsurg.settings import MonitorExportSettings

    config = json.loads((FILES / "config.json").read_text())
    base = work / "base"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures",)}))
    model.save_pretrained(base)
    for f in FILES.iterdir():
        if f.name != "config.json":
            (base / f.name).write_bytes(f.read_bytes())
    settings = MonitorExportSettings(
        model=str(base), recipe="smollm2-135m", out=work / "monitor", overwrite=True, device=DEV, batch_size=64
    )
    clock = time.perf_counter()
    spec = api.monitor_export(settings.model_copy(update={"quiet": True})).spec
    return {"build_seconds": time.perf_counter() - clock, "layer": spec.layer, "check": spec.check, "cost": spec.cost}


def score(lines):
    import torch

    from finsurg import api
    from finsurg.monitor.synthetic import planted_log  # the planted log is the benchmark's input, not a command
    from finsurg.packs import Pack
    from finsurg.settings import MonitorScoreSettings

    log = planted_log(work / f"log{lines}.jsonl", Pack.load("finance"), lines, 0.1, 0.3)
    out = work / f"scores{lines}.jsonl"
    settings = MonitorScoreSettings(log=log, monitor=work / "monitor", out=out, device=DEV, batch_size=256)
    s = api.monitor_score(settings.model_copy(update={"quiet": True})).summary
    return {
        "lines": lines,
        "scored": s.scored,
        "seconds": s.seconds,
        "per_second": s.per_second,
        "peak_rss_mb": s.peak_rss_mb,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if DEV == "cuda" else 0,
    }


if step == "all":
    results = {"build": build()}
    print(json.dumps(results), flush=True)
    for lines in SIZES:
        done = subprocess.run([sys.executable, __file__, str(FILES), str(lines)], capture_output=True, text=True)
        print(done.stderr[-3000:], flush=True)
        results[f"score_{lines}"] = (
            json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {"error": done.stderr[-2000:]}
        )
        print(json.dumps(results[f"score_{lines}"]), flush=True)
    (OUT / "monitor_gpu.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
else:
    print(json.dumps(score(int(step))))
