"""Building blocks of every validated model: configs, their sections, and the parameters that
registered losses and models declare.

:class:`Strict` refuses unknown fields, non-finite numbers and booleans where numbers are meant;
:class:`FieldError` lets a validator name a sub-field (``losses.0.temprature``);
:func:`signature_model` derives a parameter model from a callable's signature;
:func:`validate_params` checks parameters against such a model and suggests the closest valid name.
"""

from __future__ import annotations

import difflib
import inspect
import json
import typing
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, create_model, field_validator


class FieldError(ValueError):
    """A config error below the field being validated: ``where`` (e.g. ``temprature`` or ``args.widthz``)
    extends the field's location in the message, so the user reads ``losses.0.temprature: ...``."""

    def __init__(self, where: str, message: str):
        super().__init__(message)
        self.where = where


def _number_not_bool(annotation: Any) -> bool:
    """Whether a field of this type holds numbers but no booleans (``int``, ``float | None``, ``list[int]``...)."""
    seen: set[str] = set()

    def walk(t: Any) -> None:
        if t is bool or t is Any:
            seen.add("bool")
        elif t is int or t is float:
            seen.add("number")
        else:
            for a in typing.get_args(t):
                walk(a)

    walk(annotation)
    return seen == {"number"}


class Strict(BaseModel):
    """Base of every config model (and of every loss's parameter model): unknown fields, non-finite
    numbers (``.inf``, ``.nan``) and booleans where numbers are meant (``epochs: true``) are refused."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, bool) or (isinstance(v, (list, tuple)) and any(isinstance(x, bool) for x in v)):
            if _number_not_bool(cls.model_fields[info.field_name].annotation):
                raise ValueError(f"expected a number, got {json.dumps(v)}")
        return v


class SignatureParams(Strict):
    """Base of parameter models derived from a signature (defaults are the callable's own, not re-validated)."""

    model_config = ConfigDict(validate_default=False, arbitrary_types_allowed=True)


class OpenSignatureParams(SignatureParams):
    """... of a callable taking ``**kwargs``: further parameters are passed through unchecked."""

    model_config = ConfigDict(extra="allow")


def signature_model(fn: Callable, skip: int, name: str, exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """A parameter model derived from ``fn``'s signature, for registered callables that declare none.

    The parameters after the first ``skip`` (and not in ``exclude``) become fields: annotations as
    types (``Any`` where there is none), defaults as defaults, no default = required; ``**kwargs``
    makes the model open (it then accepts any further parameter)."""
    try:
        sig = inspect.signature(fn, eval_str=True)
    except Exception:  # noqa: BLE001 - unresolvable string annotations: fields become Any below
        sig = inspect.signature(fn)
    fields: dict[str, Any] = {}
    base: type[BaseModel] = SignatureParams
    for p in list(sig.parameters.values())[skip:]:
        if p.kind is p.VAR_KEYWORD:
            base = OpenSignatureParams
        elif p.kind is not p.VAR_POSITIONAL and p.name not in exclude and not p.name.startswith("_"):
            ann = Any if p.annotation is p.empty or isinstance(p.annotation, str) else p.annotation
            fields[p.name] = (ann, ... if p.default is p.empty else p.default)
    try:
        return create_model(name, __base__=base, **fields)
    except Exception:  # noqa: BLE001 - a type pydantic cannot validate: check the names only
        return create_model(name, __base__=base, **{k: (Any, d) for k, (_, d) in fields.items()})


def _error_loc(e: dict) -> list:
    """Location of one pydantic error, extended by a :class:`FieldError`'s ``where``."""
    loc = [str(p) for p in e["loc"]]
    cause = (e.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError) and cause.where:
        loc += cause.where.split(".")
    return loc


def _error_message(e: dict) -> str:
    if e["type"] == "missing":
        return "required; add it"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] != "value_error" and isinstance(e.get("input"), (int, float, str)):
        msg += f", got {e['input']!r}"
    return msg


def validate_params(model: type[BaseModel], params: dict, what: str, also: tuple[str, ...] = ()) -> BaseModel:
    """Validate the parameters of a registered loss or model (``what``: e.g. "parameter of loss 'kd'");
    raises :class:`FieldError` naming the parameter and, for an unknown one, the closest valid name
    (among the model's fields and the names in ``also``, e.g. a loss entry's ``weight``)."""
    try:
        return model.model_validate(params)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(_error_loc(e))
        if e["type"] == "extra_forbidden":
            known = sorted(model.model_fields)
            close = difflib.get_close_matches(str(e["loc"][0]), known + list(also), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else (f"known: {', '.join(known)}" if known else "it takes none")
            raise FieldError(where, f"unknown {what}; {hint}") from None
        raise FieldError(where, _error_message(e)) from None
