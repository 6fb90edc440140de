"""The distillation methods, one module each, readable top to bottom. Importing this package imports
every module in it, and the methods register themselves (:func:`raykd.method.register_method`); the
CLI, sweeps, jobs and the Python API find them in :data:`raykd.registry.METHODS`. A new module here is
a new built-in method (see ``docs/new_method.md``).

====================  ==============================================================
``kd``                teacher -> students (logit KD, hidden/attention, CKD relations)
``dynabert``          width/depth-adaptive BERT students (DynaBERT), CKD losses optional
``dataset_distill``   learned synthetic images/sentences with soft labels
``self_distill``      multi-generation self-distillation and Beta smoothing
``dpd``               dual policy distillation of two RLlib peers
====================  ==============================================================
"""

import importlib as _importlib
import pkgutil as _pkgutil

for _module in sorted(m.name for m in _pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    _importlib.import_module(f"{__name__}.{_module}")
