# make test: install into .venv (if needed) and run lint + tests. make demo: install and run the main job.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned to the local wheels; setup.cfg's range accepts it and installs nothing more
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check mdm tests perf scripts train.py finetune_seg.py

test: lint
	$(BIN)/python -m pytest -q

DEMO := runs/demo

# the whole story on the built-in synthetic data (README: its time on a 2-core CPU): pretrain MDM, sweep 10% / 100%
# labels x seeds x methods, print the verdicts and the table, write the plots, segment new images with a saved
# segmenter, print the time of each phase
demo: $(STAMP)
	$(BIN)/python -m mdm.demo --config configs/bench_demo.yaml --out $(DEMO)

bench: $(STAMP)
	$(BIN)/python perf/pretrain_throughput.py

clean:
	rm -rf $(VENV) *.egg-info
