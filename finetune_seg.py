#!/usr/bin/env python
"""The segmentation stage. Despite the name it runs the frozen-feature path by default (``seg.mode: frozen``: the
pretrained U-Net stays frozen and pixel classifiers learn from its features); ``seg.mode: finetune`` trains a whole
network end to end.

    python finetune_seg.py --config configs/seg_glas.yaml --checkpoint RUN/export [--set k=v] [--out DIR]
    python finetune_seg.py predict --model SEG_RUN --images DIR --out DIR
"""

from mdm.cli import seg_main

if __name__ == "__main__":
    raise SystemExit(seg_main())
