"""Stage 2: segmentation with few labels (datasets, splits, features, pixel MLPs, fine-tuning,
evaluation)."""
