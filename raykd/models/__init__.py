"""Model registry: CNNs (LeNet-5 and a width/depth family), BERT students built from
``transformers.BertConfig``, and the pretrained ``minilm-l6`` teacher read from its wheel.

``build(name, num_classes=..., **args)`` returns an ``nn.Module``. Image models map a float
[B, C, H, W] batch to logits; BERT models are ``transformers`` sequence classifiers.
"""

from __future__ import annotations

from pydantic import BaseModel
from torch import nn

from raykd.config import FieldError, signature_model, validate_params
from raykd.errors import UserError
from raykd.registry import Registry

MODELS: Registry = Registry("model")
register_model = MODELS.register
# arguments the runners pass themselves (from the dataset), so a config's ``args`` may not set them
RUNTIME_ARGS = ("num_classes",)
_ARGS: dict[str, type[BaseModel]] = {}


def build(name: str, field: str | None = None, **kwargs) -> nn.Module:
    fn = MODELS.get(name, field)
    try:
        return fn(**kwargs)
    except TypeError as e:
        raise UserError(f"{field or name}: bad arguments for model {name!r}: {e}") from None


def args_model(name: str) -> type[BaseModel]:
    """The model of the ``args`` a config may give registered model ``name``: its factory's signature."""
    if name not in _ARGS:
        _ARGS[name] = signature_model(MODELS.get(name), 0, f"{name}_args", exclude=RUNTIME_ARGS)
    return _ARGS[name]


def check_args(name: str, args: dict, field: str = "args") -> None:
    """Refuse ``args`` that model ``name``'s factory does not take, or that it rejects when the model is
    built on the meta device (no memory, no weights); raises :class:`FieldError` under ``field``."""
    for key in RUNTIME_ARGS:
        if key in args:
            raise FieldError(f"{field}.{key}", "set from the dataset (data.num_classes for your own data), not in args; remove it")
    try:
        validate_params(args_model(name), args, f"argument of model {name!r}")
    except FieldError as e:
        raise FieldError(f"{field}.{e.where}" if e.where else field, str(e)) from None
    from raykd.models.size import meta_param_count

    try:
        meta_param_count(name, args)
    except (TypeError, ValueError) as e:
        raise FieldError(field, f"model {name!r} refuses these arguments ({e}); fix them") from None
    except Exception:  # noqa: BLE001 - a factory that cannot be built on meta (e.g. reads files): the run checks it
        pass


from raykd.models import bert as _bert, cnn as _cnn  # noqa: E402,F401
from raykd.models import text as _text  # noqa: E402,F401
