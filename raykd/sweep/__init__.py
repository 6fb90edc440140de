"""Ray Tune integration, the distillation metric, leaderboards and plots."""
