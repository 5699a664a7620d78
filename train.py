#!/usr/bin/env python
"""Pretrain a U-Net with MDM, DDPM or MAE:
``python train.py --config configs/tiny.yaml [--set k=v] [--resume latest]``."""

from mdm.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
