"""Run inside the llama.cpp environment (make llamacpp-setup): logits and greedy tokens from llama.cpp.

It imports nothing from finsurg. Each prompt's logits (every prompt position) go to SCRATCH/logits-K.npy:

    python llamacpp.py REQUEST.json RESULT.json
    request: {"model": GGUF, "control_vector": GGUF or null, "scale": float, "prompts": [[ids]],
              "new_tokens": N, "scratch": DIR}
    result:  {"version": v, "greedy": [[token ids], ...]}

The control vector is laid out as llama.cpp's own loader lays it out (direction.N at row N-1 of an
n_embd x n_layer buffer, times the scale) and applied to blocks 1..n_layer, as
`--control-vector-scaled FILE:SCALE` does.
"""

import ctypes
import json
import os
import sys
from pathlib import Path

import numpy as np


def control_vector(path: str, scale: float, n_embd: int, n_layer: int) -> np.ndarray:
    import gguf

    buffer = np.zeros(n_embd * n_layer, dtype=np.float32)
    for tensor in gguf.GGUFReader(path).tensors:
        layer = int(tensor.name.split(".")[1])
        buffer[(layer - 1) * n_embd : layer * n_embd] += scale * np.asarray(tensor.data, dtype=np.float32)
    return buffer


def main(request_path: str, result_path: str) -> None:
    import llama_cpp

    request = json.loads(Path(request_path).read_text())
    longest = max(len(ids) for ids in request["prompts"]) + request["new_tokens"] + 8
    llm = llama_cpp.Llama(
        model_path=request["model"],
        n_ctx=max(256, longest),
        logits_all=True,
        n_threads=os.cpu_count(),
        type_k=llama_cpp.GGML_TYPE_F32,  # an F16 cache would round the two routes' (equal) states apart
        type_v=llama_cpp.GGML_TYPE_F32,
        flash_attn=False,
        verbose=False,
    )
    if request.get("control_vector"):
        n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm._model.model)
        buffer = control_vector(request["control_vector"], request["scale"], n_embd, n_layer)
        pointer = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        if llama_cpp.llama_set_adapter_cvec(llm.ctx, pointer, buffer.size, n_embd, 1, n_layer) != 0:
            raise SystemExit("llama.cpp refused the control vector")
    out = Path(request["scratch"])
    greedy = []
    for k, ids in enumerate(request["prompts"]):
        llm.reset()
        llm.eval(ids)
        np.save(out / f"logits-{k}.npy", np.array(llm.scores[: len(ids)], dtype=np.float32))
        tokens = []
        for _ in range(request["new_tokens"]):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            tokens.append(token)
            llm.eval([token])
        greedy.append(tokens)
    Path(result_path).write_text(json.dumps({"version": llama_cpp.__version__, "greedy": greedy}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
