# The two commands of the README:  make app  (install, then start the app)  and  make test  (install, then test).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: app test bench lint install chromium gpu-check
install: $(VENV)/.installed

# the pinned requirements, then the workbench itself (editable): workbench-app and workbench-probe on the venv's PATH
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

app: install
	HF_HUB_OFFLINE=1 $(BIN)/workbench-app --port $(PORT)

test: install chromium
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# PNG/SVG export needs a Chromium for kaleido; Debian's package (never a downloaded browser)
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk fonts-noto-color-emoji) || echo "chromium could not be installed: PNG/SVG export will say so, HTML export still works"

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks

# on a machine with a GPU: the tests that matter and the GPT-2-small and 1B benchmarks on DEVICE, under 8 minutes (benchmarks/gpu_check.py)
DEVICE ?= cuda
gpu-check: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.gpu_check --device $(DEVICE) $(GPU_CHECK_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
