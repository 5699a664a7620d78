# make test: install into .venv (if needed) and run lint + tests. make demo: install and run the main job.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the local wheels; setup.cfg's range accepts it and installs nothing more
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check mdm tests bench train.py

test: lint
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python train.py --config configs/tiny.yaml --out runs/demo/pretrain_mdm --set train.max_steps=1500

bench: $(STAMP)
	$(BIN)/python bench/pretrain_throughput.py

clean:
	rm -rf $(VENV) *.egg-info
