"""Stage 2, image level: classification heads on frozen U-Net features, and fine-tuned
classifiers."""
