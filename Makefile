# One command per job; each installs what it needs first (idempotent, fast when already installed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The shared IMDB copy when present, else the Hugging Face dataset (needs internet and bertsent[hub]).
DATA ?= $(if $(wildcard ../shared/data/imdb/train.parquet),../shared/data/imdb,stanfordnlp/imdb)
DEMO_DIR ?= runs/demo
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast lint docs reproduce clean

install: $(BIN)/.installed

# torch is pinned first so pip takes the CPU wheel on this disk instead of a multi-GB CUDA build.
# The extras: what the demo needs without ../shared (hub: the Hugging Face dataset), the tests (dev, keras,
# openvino, ray) and the documentation site (docs).
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev,docs,hub,keras,openvino,ray]"
	touch $@

# The main job: fine-tune the embedded all-MiniLM-L6-v2 on 2,000 IMDB reviews, test on 2,000.
demo: install
	$(BIN)/bertsent train --data $(DATA) --output-dir $(DEMO_DIR) \
		--train-samples 2000 --validation-size 500 --eval-samples 2000 \
		--epochs 1 --max-length 256 --truncation head+tail

# Every test, the real-model ones on slices of the shared IMDB data included (what CI runs).
test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/lint-imports
	$(BIN)/python scripts/gen_reference.py --check

# The documentation site (MkDocs Material) into build/site; strict: a broken link or anchor fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf runs .pytest_cache .ruff_cache

# The full-scale recipe (hours on 2 cores; rerun to continue). FAST=1 runs it on small slices.
reproduce: install
	$(BIN)/bertsent reproduce --data $(DATA) $(if $(FAST),--fast --output-dir runs/reproduce-fast,--doc docs/results.md)
