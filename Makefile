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
	$(BIN)/ruff check mdm tests bench train.py finetune_seg.py

test: lint
	$(BIN)/python -m pytest -q

DEMO := runs/demo

# the whole story on the built-in synthetic data (9 min 16 s on a 2-core Xeon, install included): pretrain MDM and
# DDPM, sweep 10% / 100% labels x 2 seeds x 6 methods, print the table, write the plots; then segment new images
# with a saved segmenter
demo: $(STAMP)
	$(BIN)/python -m mdm.benchmark --config configs/bench_demo.yaml --out $(DEMO)
	$(BIN)/python -c "from mdm.common.synthetic import save_examples; save_examples('$(DEMO)/new_images', 3)"
	$(BIN)/python finetune_seg.py predict --model $(DEMO)/runs/mdm/f0.1_s0 --images $(DEMO)/new_images \
		--out $(DEMO)/predict
	@echo "see $(DEMO)/results.md, label_efficiency.png, pretrain_budget.png, pretrain_mdm/samples/, predict/overlays/"

bench: $(STAMP)
	$(BIN)/python bench/pretrain_throughput.py

clean:
	rm -rf $(VENV) *.egg-info
