#!/usr/bin/env python
"""Segmentation stage on frozen pretrained features.

    python finetune_seg.py --config configs/seg_glas.yaml --checkpoint RUN/export [--set k=v] [--out DIR]
    python finetune_seg.py predict --model SEG_RUN --images DIR --out DIR
"""

from mdm.seg_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
