# mpqfx developer entry points. `make test` and `make demo` install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: install data test test-slow test-zoo mutate demo bench clean

install: $(STAMP)

# Re-installs only when pyproject.toml changed since the last successful install.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

# Installs Debian's dataset-fashion-mnist when neither it nor $MPQFX_DATA_DIR is there (the demo
# and tests/data, tests/export read it).
data:
	@if [ ! -f $(FASHION_MNIST) ] && [ -z "$$MPQFX_DATA_DIR" ]; then \
	  echo "installing Fashion-MNIST: apt-get install dataset-fashion-mnist"; \
	  $$([ "$$(id -u)" = 0 ] || echo sudo) apt-get install -y dataset-fashion-mnist; \
	fi

# Two pytest-xdist workers of one torch thread each (tests/conftest.py), a test file per worker at a
# time so that module fixtures are built once; TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: install data
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# The wide timm zoo (tests/graph/test_wide_zoo.py, writes docs/coverage.md): two checks at once, one
# torch thread each, on 2 cores. CI (.ci/run) runs this target after `make test`, with
# MPQFX_ZOO_DEADLINE set; the environment overrides these settings.
export MPQFX_ZOO_WORKERS ?= 2
export MPQFX_ZOO_THREADS ?= 1
test-zoo: install data
	$(BIN)/python -m pytest -q -m slow tests/graph/test_wide_zoo.py

# Every slow test: the wide zoo, then the other long runs.
test-slow: test-zoo
	$(BIN)/python -m pytest -q -m slow --ignore=tests/graph/test_wide_zoo.py

MUTATE_STAMP := $(VENV)/.installed-mutate

$(MUTATE_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,mutate]'
	touch $@

# Mutation testing of the core modules (mutmut 3, [tool.mutmut] in pyproject.toml, docs/testing.md);
# not part of `make test`. MODULES="mpqfx/evaluate.py ..." limits it; it ends with
# "mutation: killed K of M (P%)". Results are kept in mutants/ (rm -r mutants starts over).
mutate: install data $(MUTATE_STAMP)
	$(BIN)/python tools/mutate.py $(MODULES)

# Runs the whole job (float warm start, supernet, search, evaluation, report, export).
demo: install data
	$(BIN)/mpqfx compress --model efficientnet_lite0

# The benchmarks that need no finished run and no data set, minutes each on 2 CPU cores (tables in
# docs/benchmarks.md): prepare() time, training step and layout ratios, BN-set overhead, exact ILP
# solve times, CLI start-up of this checkout. Not run here, each with its command in
# docs/benchmarks.md: bench_search.py's greedy part (about 17 min), bench_accuracy.py (hours per
# model), bench_trainer_throughput.py (needs Fashion-MNIST), bench_deploy.py (several minutes at
# 224x224, best with a run's searched policies), bench_imagefolder.py and bench_imagenet_cost.py
# (training steps at 160-224 px), bench_finetune_throughput.py (three models' training steps; it did
# not finish in 36 min on a shared machine),
# bench_ptq_vs_mct.py (needs a trained float checkpoint; MCT from the `peers` extra), and the
# scripts that read a finished run: bench_bit_breakdown.py, bench_deploy_agreement.py,
# bench_search_headroom.py, bench_supernet_settings.py.
bench: install
	$(BIN)/python benchmarks/bench_prepare.py
	$(BIN)/python benchmarks/bench_train_step.py
	$(BIN)/python benchmarks/bench_channels_last.py
	$(BIN)/python benchmarks/bench_bn_overhead.py
	$(BIN)/python benchmarks/bench_search.py --no-greedy
	$(BIN)/python benchmarks/bench_startup.py --refs HEAD

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
