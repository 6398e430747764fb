# Quick start: `make demo` (set up, then serve the demo page with the embedded default), `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO_TEXT := Hello! I am sonate. I speak and move as the text arrives.

.PHONY: setup test lint demo clip bench checkpoint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools<81" wheel

# torch first, pinned: this takes the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
$(INSTALLED): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(INSTALLED)

setup: $(INSTALLED)

test: setup
	$(BIN)/pytest -q $(PYTEST_ARGS) || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest collected no tests" >&2; exit $$rc; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: setup
	$(BIN)/sonate serve --host 127.0.0.1 --port 8000

clip: setup
	$(BIN)/sonate generate --text "$(DEMO_TEXT)" --out out/demo.mp4

bench: setup
	$(BIN)/sonate bench model --preset tiny --seconds 30 --json out/bench-model.json

# The recipe of the shipped default checkpoint (docs/model-card.md): a 2-hour world, the codecs, the model on two
# data-parallel processes, then two fine-tunes with the video loss weighted toward the mouth. About 3.5 hours on a
# 2-core CPU; writes out/tune2/checkpoint, then copies its weights in (the reference voice and face stay).
checkpoint: setup
	$(BIN)/sonate data make --out data/world --hours 2 --seed 0
	$(BIN)/sonate train codecs --data data/world --out out/codecs --threads 1
	$(BIN)/torchrun --nproc-per-node 2 $(BIN)/sonate train model --data data/world --codecs out/codecs \
		--out out/train --steps 1000 --batch 4 --lr 8e-4 --warmup 50 --ema 0.995 --val-every 200 --threads 1
	$(BIN)/torchrun --nproc-per-node 2 $(BIN)/sonate train model --data data/world --codecs out/codecs \
		--init out/train/checkpoint --mouth-weight 6 --seed 1 \
		--out out/tune --steps 800 --batch 4 --lr 4e-4 --warmup 50 --ema 0.995 --val-every 200 --threads 1
	$(BIN)/torchrun --nproc-per-node 2 $(BIN)/sonate train model --data data/world --codecs out/codecs \
		--init out/tune/checkpoint --mouth-weight 6 --seed 2 \
		--out out/tune2 --steps 1500 --batch 4 --lr 4e-4 --warmup 50 --ema 0.995 --val-every 250 --threads 1
	mkdir -p models/checkpoints/default && cp out/tune2/checkpoint/*.json out/tune2/checkpoint/*.safetensors \
		models/checkpoints/default/

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
