"""raykd: a distillation platform on Ray.

Five kinds of distillation (language-model distillation with linguistic context, the distillation
metric with Tune sweeps, dataset distillation with soft labels, dual policy distillation on RLlib and
self-distillation), one config format and one results table.
"""

__version__ = "0.1.0"
