"""Model registry: CNNs (LeNet-5 and a width/depth family), BERT students built from
``transformers.BertConfig``, and the pretrained ``minilm-l6`` teacher read from its wheel.

``build(name, num_classes=..., **args)`` returns an ``nn.Module``. Image models map a float
[B, C, H, W] batch to logits; BERT models are ``transformers`` sequence classifiers.
"""

from __future__ import annotations

from torch import nn

from raykd.errors import UserError
from raykd.registry import (MODELS, RUNTIME_ARGS, args_model, check_args, meta_model, model_tokenizer,  # noqa: F401
                            register_model, runtime_kwargs)


def build(name: str, field: str | None = None, **kwargs) -> nn.Module:
    """Model ``name`` from its config ``args`` plus the runtime arguments it takes (``num_classes``, and
    ``input_shape``/``label_names`` for factories that name them; others are dropped)."""
    fn = MODELS.get(name, field)
    runtime = {k: kwargs.pop(k) for k in RUNTIME_ARGS if k in kwargs}
    try:
        return fn(**kwargs, **runtime_kwargs(name, **runtime))
    except TypeError as e:
        raise UserError(f"{field or name}: bad arguments for model {name!r}: {e}") from None


from raykd.models import bert as _bert, cnn as _cnn  # noqa: E402,F401
from raykd.models import text as _text  # noqa: E402,F401
from raykd.models import hf as _hf, vision as _vision  # noqa: E402,F401
