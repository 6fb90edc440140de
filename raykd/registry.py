"""Name -> object registries: datasets, models, losses and methods.

Configs refer to registered names only; nothing is imported by string from a config. Each registry
knows the package that registers the built-in entries and imports it the first time a name is looked
up, so the config layer can check names without importing the parts that define them. Users add their
own entries with the ``register_*`` functions, from a plugin (``plugins:`` in a config, imported in
the driver and in the Ray workers).

Every entry declares what a config may say about it:

* a **loss** its parameters, as a pydantic model (``register_loss("kd", params=KDParams)``; derived
  from the signature when not given) and which teacher outputs it needs;
* a **model** the ``args`` its factory takes (from the factory's signature), and optionally a
  ``meta`` factory of the same architecture that reads no files, so that configs can be checked on
  PyTorch's meta device (sizes, depths) without weights;
* a **dataset** its kind, classes, splits, source and licence (:class:`DatasetInfo`);
* a **method** its settings model, the shared config sections it reads, and its run
  (:class:`raykd.method.Method`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Generic, Iterator, TypeVar

from pydantic import BaseModel, Field, NonNegativeInt

from raykd.errors import UserError
from raykd.schema import FieldError, Strict, signature_model, validate_params

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects, filled with :meth:`register`.

    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("my_loss")
    ... def my_loss(student_out, teacher_out, batch, **kw): ...
    """

    def __init__(self, kind: str, builtins: str | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._builtins = builtins  # package whose import registers the built-in entries

    def _load_builtins(self) -> None:
        if self._builtins is not None:
            package, self._builtins = self._builtins, None
            importlib.import_module(package)

    def register(self, name: str, obj: T | None = None):
        def deco(o: T) -> T:
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            return o

        return deco(obj) if obj is not None else deco

    def get(self, name: str, field: str | None = None) -> T:
        self._load_builtins()
        if name not in self._items:
            raise UserError(self.unknown_message(name, field))
        return self._items[name]

    def unknown_message(self, name: str, field: str | None = None) -> str:
        self._load_builtins()
        close = difflib.get_close_matches(str(name), list(self._items), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else (
            f"known: {', '.join(sorted(self._items))} (your own {self.kind}? list its module or .py file "
            "under plugins: or pass --plugin)")
        where = f"{field}: " if field else ""
        return f"{where}unknown {self.kind} {name!r}; {hint}"

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str  # "image" | "text"
    num_classes: int
    sizes: dict[str, int]
    source: str
    licence: str
    loader: Callable[[str], dict] = field(repr=False, compare=False)
    class_names: tuple[str, ...] = ()


DATASETS: Registry[DatasetInfo] = Registry("dataset", builtins="raykd.data")


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    return DATASETS.register(info.name, info)


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------

MODELS: Registry[Callable] = Registry("model", builtins="raykd.models")
# a factory of the same architecture that reads no files (e.g. a pretrained model's shape)
_META_FACTORIES: dict[str, Callable] = {}
# arguments the runners pass themselves (from the dataset), so a config's ``args`` may not set them:
# ``num_classes`` always; ``input_shape`` ([C, H, W] of the images) and ``label_names`` (the data's class
# names, in label order) only to factories that name them as parameters
RUNTIME_ARGS = ("num_classes", "input_shape", "label_names")
# model args that may name local files or directories (hf: path/config/tokenizer, timm: weights)
FILE_ARGS = ("path", "weights", "config", "tokenizer")
# name -> f(**args) -> the model's tokenizer (text models that bring their own; the rest use MiniLM's)
_TOKENIZERS: dict[str, Callable] = {}
_ARGS: dict[str, type[BaseModel]] = {}
_META: dict[tuple, Any] = {}


def register_model(name: str, obj: Callable | None = None, *, meta: Callable | None = None,
                   tokenizer: Callable | None = None):
    """Register a model factory ``f(num_classes=..., **args) -> nn.Module`` under ``name``; ``meta`` is
    an optional factory of the same architecture that reads no files (used to check configs), and
    ``tokenizer`` an optional ``f(**args)`` returning the tokenizer of a text model that brings its own
    (a Hugging Face tokenizer; models without one read MiniLM's WordPiece ids)."""

    def deco(o: Callable) -> Callable:
        MODELS.register(name, o)
        if meta is not None:
            _META_FACTORIES[name] = meta
        if tokenizer is not None:
            _TOKENIZERS[name] = tokenizer
        return o

    return deco(obj) if obj is not None else deco


def model_tokenizer(name: str, args: dict):
    """The tokenizer registered model ``name`` reads with ``args``, or None (MiniLM's WordPiece)."""
    MODELS.get(name)
    fn = _TOKENIZERS.get(name)
    return fn(**args) if fn is not None else None


def runtime_kwargs(name: str, **available) -> dict:
    """The runtime arguments (see ``RUNTIME_ARGS``) that model ``name``'s factory takes: ``num_classes``
    always, the others only when the factory names them as parameters."""
    params = inspect.signature(MODELS.get(name)).parameters
    return {k: v for k, v in available.items() if v is not None and (k == "num_classes" or k in params)}


def args_model(name: str) -> type[BaseModel]:
    """The model of the ``args`` a config may give registered model ``name``: its factory's signature."""
    if name not in _ARGS:
        _ARGS[name] = signature_model(MODELS.get(name), 0, f"{name}_args", exclude=RUNTIME_ARGS)
    return _ARGS[name]


def meta_model(name: str, args: dict, num_classes: int | None = None):
    """Registered model ``name`` built on PyTorch's meta device (no memory, no weights, no files read),
    memoised per spec; raises what the factory raises."""
    import torch

    key = (name, json.dumps(args, sort_keys=True, default=repr), num_classes)
    if key not in _META:
        factory = _META_FACTORIES.get(name) or MODELS.get(name)
        kwargs = {**args, **({"num_classes": num_classes} if num_classes else {})}
        try:
            with torch.device("meta"):
                _META[key] = factory(**kwargs)
        except Exception as e:  # noqa: BLE001 - remembered and re-raised to every caller
            _META[key] = e
    out = _META[key]
    if isinstance(out, Exception):
        raise out
    return out


def check_args(name: str, args: dict, field: str = "args") -> None:
    """Refuse ``args`` that model ``name``'s factory does not take, or that it rejects when the model is
    built on the meta device; raises :class:`FieldError` under ``field``."""
    for key in RUNTIME_ARGS:
        if key in args:
            raise FieldError(f"{field}.{key}", "set from the dataset (data.num_classes for your own data), not in args; remove it")
    try:
        validate_params(args_model(name), args, f"argument of model {name!r}")
    except FieldError as e:
        raise FieldError(f"{field}.{e.where}" if e.where else field, str(e)) from None
    try:
        meta_model(name, args)
    except UserError as e:  # a named file is missing or unreadable
        raise FieldError(field, str(e)) from None
    except (TypeError, ValueError) as e:
        raise FieldError(field, f"model {name!r} refuses these arguments ({e}); fix them") from None
    except Exception:  # noqa: BLE001 - a factory that cannot be built on meta (e.g. reads files): the run checks it
        pass


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------

LOSSES: Registry[Any] = Registry("loss", builtins="raykd.losses")
# name -> the pydantic model of the loss's parameters
PARAMS: dict[str, type[BaseModel]] = {}
# which outputs each loss needs from the teacher (so the engine can skip computing / caching the rest)
NEEDS: dict[str, set[str]] = {}


class LossParams(Strict):
    """Base of a loss's parameter model (a loss without parameters registers this one itself)."""


# [teacher_layer, student_layer] pairs of hidden states (0 = the embedding output)
LayerMap = Annotated[list[Annotated[list[NonNegativeInt], Field(min_length=2, max_length=2)]], Field(min_length=1)]


def register_loss(name: str, obj: Any = None, *, params: type[BaseModel] | None = None, needs: tuple[str, ...] = ()):
    """Register a loss function ``f(student_out, teacher_out, batch, **params)`` or ``nn.Module`` class
    ``cls(context=..., **params)`` under ``name``, with its parameter model (default: derived from its
    signature: annotations as types, defaults as defaults, ``**kwargs`` accepts anything further) and the
    teacher outputs it reads (``logits``, ``hidden_states``, ``attentions``)."""

    def deco(o):
        LOSSES.register(name, o)
        if params is not None:
            PARAMS[name] = params
        if needs:
            NEEDS[name] = set(needs)
        return o

    return deco(obj) if obj is not None else deco


def loss_reads(name: str, params: dict) -> set[str]:
    """What a config's loss entry reads from the teacher: ``features`` (module outputs by path) when it
    names ``teacher_module``, else what loss ``name`` registered it needs."""
    return {"features"} if params.get("teacher_module") else NEEDS.get(name, set())


def loss_params(name: str) -> type[BaseModel]:
    """The parameter model of registered loss ``name``."""
    obj = LOSSES.get(name)
    if name not in PARAMS:
        from torch import nn

        if inspect.isclass(obj) and issubclass(obj, nn.Module):  # cls(context=..., **params)
            PARAMS[name] = signature_model(obj, 0, f"{name}_params", exclude=("context",))
        else:  # f(student_out, teacher_out, batch, **params)
            PARAMS[name] = signature_model(obj, 3, f"{name}_params")
    return PARAMS[name]


def check_loss_params(name: str, params: dict) -> dict[str, Any]:
    """Validated keyword arguments of loss ``name`` (defaults filled in); raises :class:`FieldError`
    naming the parameter, and for an unknown one the closest valid name."""
    return validate_params(loss_params(name), params, f"parameter of loss {name!r}", also=("weight",)).model_dump()


# ------------------------------------------------------------------------------------------------
# Methods
# ------------------------------------------------------------------------------------------------

METHODS: Registry[Any] = Registry("method", builtins="raykd.distill")
