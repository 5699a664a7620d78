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

# pretrain MDM on the synthetic pool (~5 min on 2 cores), segment unseen test slides with 10% of the labels,
# then segment a folder of new images with the saved segmenter
demo: $(STAMP)
	$(BIN)/python train.py --config configs/tiny.yaml --out $(DEMO)/pretrain_mdm --set train.max_steps=1500
	$(BIN)/python finetune_seg.py --config configs/seg_synthetic.yaml --checkpoint $(DEMO)/pretrain_mdm/export \
		--out $(DEMO)/seg_mdm
	$(BIN)/python -c "from mdm.data.synthetic import save_examples; save_examples('$(DEMO)/new_images', 3)"
	$(BIN)/python finetune_seg.py predict --model $(DEMO)/seg_mdm --images $(DEMO)/new_images \
		--out $(DEMO)/predict
	@echo "demo outputs in $(DEMO)/: pretrain_mdm/samples/*.png (reconstructions), seg_mdm/metrics.json, seg_mdm/overlays/"

bench: $(STAMP)
	$(BIN)/python bench/pretrain_throughput.py

clean:
	rm -rf $(VENV) *.egg-info
