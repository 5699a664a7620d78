"""Stage 1: self-supervised pretraining (objectives, pools, sampler, the Accelerate trainer,
exports, converter)."""
