"""Ray Train integration: the training loop, teacher placement, checkpoints and resume."""
