"""raykd: a distillation platform on Ray.

Five kinds of distillation (language-model distillation with linguistic context, the distillation
metric with Tune sweeps, dataset distillation with soft labels, dual policy distillation on RLlib and
self-distillation), one config format and one results table.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "run": "raykd.api",
    "load_config": "raykd.config",
    "register_loss": "raykd.registry",
    "register_model": "raykd.registry",
    "register_dataset": "raykd.registry",
    "register_method": "raykd.method",
    "RunResult": "raykd.lifecycle",
    "UserError": "raykd.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """``raykd.run``, ``raykd.load_config`` and the ``register_*`` functions, imported on first use (so
    that ``import raykd`` in a Ray worker stays cheap)."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'raykd' has no attribute {name!r}")
