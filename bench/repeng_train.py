"""Train a repeng control vector on finsurg's train split, as repeng ships (run in .venv-bench).

    python repeng_train.py MODEL_DIR ANSWERS_JSON OUT.safetensors

repeng reads the last token's hidden state of each text and takes the first principal component
(`pca_center`) per layer. Each text is a training pair's question through the chat template,
followed by its answer: the same pairs finsurg's directions are read from.
"""

import json
import sys
import time

import torch
from repeng import ControlVector, DatasetEntry
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

LAYERS = list(range(10, 28))  # the band the repeng peer used on this model


def main(model_dir: str, answers: str, out: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pairs = json.loads(open(answers).read())["train"]

    def text(question: str, answer: str) -> str:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        return prompt + answer

    dataset = [
        DatasetEntry(positive=text(p["question"], p["positive"]), negative=text(p["question"], p["negative"]))
        for p in pairs
    ]
    clock = time.perf_counter()
    vector = ControlVector.train(model, tokenizer, dataset, hidden_layers=LAYERS, method="pca_center", batch_size=16)
    seconds = time.perf_counter() - clock
    save_file(
        {f"direction.{layer}": torch.from_numpy(d).float().contiguous() for layer, d in vector.directions.items()},
        out,
        metadata={"method": "pca_center", "seconds": f"{seconds:.1f}", "pairs": str(len(dataset))},
    )
    print(json.dumps({"seconds": seconds, "layers": LAYERS, "pairs": len(dataset)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
