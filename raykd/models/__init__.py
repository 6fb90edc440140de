"""Model registry: CNNs (LeNet-5 and a width/depth family), BERT students built from
``transformers.BertConfig``, and the pretrained ``minilm-l6`` teacher read from its wheel.

``build(name, num_classes=..., **args)`` returns an ``nn.Module``. Image models map a float
[B, C, H, W] batch to logits; BERT models are ``transformers`` sequence classifiers.
"""

from __future__ import annotations

from torch import nn

from raykd.errors import UserError
from raykd.registry import MODELS, RUNTIME_ARGS, args_model, check_args, meta_model, register_model  # noqa: F401


def build(name: str, field: str | None = None, **kwargs) -> nn.Module:
    fn = MODELS.get(name, field)
    try:
        return fn(**kwargs)
    except TypeError as e:
        raise UserError(f"{field or name}: bad arguments for model {name!r}: {e}") from None


from raykd.models import bert as _bert, cnn as _cnn  # noqa: E402,F401
from raykd.models import text as _text  # noqa: E402,F401
