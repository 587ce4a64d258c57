"""Training: configs, clip tensors, the training loop, encoding."""
