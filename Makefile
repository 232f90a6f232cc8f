# mpqfx developer entry points. `make test` and `make demo` install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: install test test-slow demo bench clean

install: $(STAMP)

# Re-installs only when pyproject.toml changed since the last successful install.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

test: install
	$(BIN)/python -m pytest -q --durations=15

test-slow: install
	$(BIN)/python -m pytest -q -m slow

FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

# Installs Debian's dataset-fashion-mnist when neither it nor $MPQFX_DATA_DIR is there, then
# runs the whole job (float warm start, supernet, search, evaluation, report, export).
demo: install
	@if [ ! -f $(FASHION_MNIST) ] && [ -z "$$MPQFX_DATA_DIR" ]; then \
	  echo "installing Fashion-MNIST: apt-get install dataset-fashion-mnist"; \
	  $$([ "$$(id -u)" = 0 ] || echo sudo) apt-get install -y dataset-fashion-mnist; \
	fi
	$(BIN)/mpqfx compress --model efficientnet_lite0

bench: install
	$(BIN)/python benchmarks/bench_prepare.py
	$(BIN)/python benchmarks/bench_train_step.py
	$(BIN)/python benchmarks/bench_search.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
