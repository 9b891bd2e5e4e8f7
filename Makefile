# Two commands do all set-up on a fresh machine:
#   make quickstart   create .venv, install, train MiniLM on AG News offline (<= 10 min on 2 CPU cores)
#   make test         create .venv, install, run the test suite (slow tests excluded: make test-slow)
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch 2.13.0 is what this project is developed against; a newer, unpinned torch
# would pull a multi-GB CUDA build. On a GPU machine: make TORCH_SPEC="torch==2.13.0" (CUDA wheel from PyPI).
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,peft,sweeps,wandb,slurm,export,ensemble,serve,report,augment
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)-$(EXTRAS)

.PHONY: install system-deps quickstart train test test-slow test-gpu test-all serve bench-serving bench-startup bench-throughput bench-quickstart clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.3"
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-* && touch $@

# System packages the tests need (a real PostgreSQL server for the sweep tests, chromium for the report's browser test). Installed with apt when missing
# and running as root (CI and the project's machines); elsewhere the tests say what to install.
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else echo "PostgreSQL server binaries missing: install the 'postgresql' package (tests/test_sweeps_postgres.py)"; fi; \
	fi
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: install Debian's 'chromium' package (the evaluation report's browser test)"; fi; \
	fi

quickstart: install
	$(BIN)/python -m agnews.train experiment=quickstart

# make train ARGS="model=roberta trainer.max_epochs=3"
train: install
	$(BIN)/python -m agnews.train $(ARGS)

test: install system-deps
	$(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: install system-deps
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# make serve RUN=outputs/quickstart/runs/<run> [ARGS="port=3000 grpc_port=50051 batching.enabled=false"]
serve: install
	$(BIN)/python -m agnews.serve run=$(RUN) $(ARGS)

bench-serving: install
	$(BIN)/python experiments/serving/load_test.py --run $(RUN) $(if $(ARGS),-- $(ARGS))

# On a machine with a CUDA GPU (and TensorRT): GPU tests fail, not skip, when no GPU is found.
test-gpu: install
	AGNEWS_REQUIRE_GPU=1 $(BIN)/python -m pytest -m gpu $(PYTEST_ARGS)

test-all: install system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench-startup: install
	$(BIN)/python experiments/startup/measure_cli_startup.py

bench-quickstart: install
	$(BIN)/python experiments/quickstart/measure_quickstart.py

bench-throughput: install
	$(BIN)/python experiments/throughput/hf_trainer_vs_agnews.py

clean:
	rm -rf $(VENV) .cache outputs .pytest_cache
