"""vLLM's OpenAI-compatible server on 127.0.0.1 for one model directory, always stopped on exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OpenAIServer:
    def __init__(self, python: str, model: Path, log: Path, extra: tuple[str, ...] = ()):
        self.python, self.model, self.log, self.extra = python, model, log, list(extra)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopped = False

    def __enter__(self) -> OpenAIServer:
        command = [
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--enforce-eager",
            *self.extra,
        ]
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
        with open(self.log, "w") as log:
            # its own process group, so the engine's worker processes stop with it
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        self.start_seconds = START_TIMEOUT - (deadline - time.monotonic())
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        raise TimeoutError(f"vLLM server not healthy after {START_TIMEOUT} s")

    def complete(self, prompt_ids: list[int], max_tokens: int) -> list[int]:
        """Greedy completion of token ids through /v1/completions; the token ids it returns."""
        body = {
            "model": str(self.model),
            "prompt": prompt_ids,
            "max_tokens": max_tokens,
            "temperature": 0,
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
            "ignore_eos": True,
        }
        request = urllib.request.Request(
            f"{self.url}/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            tokens = json.load(response)["choices"][0]["logprobs"]["tokens"]
        return [int(token.removeprefix("token_id:")) for token in tokens]

    def classify(self, texts: list[str]) -> list[list[float]]:
        """Each text's probs from /classify, as a client of a pooling server gets them."""
        body = {"model": str(self.model), "input": texts}
        request = urllib.request.Request(
            f"{self.url}/classify", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return [item["probs"] for item in sorted(json.load(response)["data"], key=lambda item: item["index"])]

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.stopped = True
