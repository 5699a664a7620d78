"""``python -m mdm.convert``: a published U-Net checkpoint -> an export folder (see
``mdm.pretrain.convert``)."""

from .cli import convert_main as main

if __name__ == "__main__":
    raise SystemExit(main())
