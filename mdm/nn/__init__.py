"""The network: guided-diffusion's U-Net as a pure ``nn.Module`` and its fused CPU norm op."""
