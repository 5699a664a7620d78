"""mdm: masked diffusion models for self-supervised U-Net pretraining and label-efficient
segmentation."""

__version__ = "0.1.0"
