"""Typed configs (pydantic). The only place a config is validated.

A config is a UTF-8 YAML file loaded with ``safe_load`` semantics (no Python tags, nothing executed;
aliases that expand past :data:`MAX_CONFIG_NODES` nodes are refused) into the model for its
``method``. Unknown keys, wrong types, non-finite numbers, booleans where numbers are meant,
impossible values, unknown registry names, unknown or bad loss parameters and model arguments,
layer maps beyond the models' depths, sweep axes that name no field and missing files fail here,
before any Ray work, with one sentence naming the field (the CLI exits 2).

Top-level fields shared by every method: ``name``, ``method``, ``output_dir``, ``seed``, ``ray``,
``metric``. Method-specific sections are validated by the section models their methods define
(``rl:`` for ``dpd``, ``dataset_distill:`` for ``dataset_distill``, ...).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import math
import typing
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator,
                      model_validator)

from raykd.errors import UserError


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


class RayConfig(Strict):
    address: str | None = Field(None, description="Ray address to connect to; None starts a local Ray in-process")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default: all)")
    dashboard: bool = Field(True, description="start the dashboard (bound to 127.0.0.1) for a local Ray; Ray Train's "
                            "placement-group cleaner reads actor states through it, and without it logs a warning every second")


class MetricConfig(Strict):
    a: float = Field(0.5, ge=0.0, le=1.0, description="weight of size in DS = a*size_s/size_t + (1-a)*(1-acc_s/acc_t)")
    size: Literal["params", "bytes", "macs"] = "params"


class DataConfig(Strict):
    name: str = "mnist"
    path: str | None = Field(None, description="your own data (IDX dir, CSV/TSV, parquet, saved HF dataset); name must be 'user'")
    test_path: str | None = Field(None, description="your own evaluation file; without it a stratified hold-out of data.path "
                                  "(test_fraction) is evaluated on, never the training rows")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of each class of data.path held out for evaluation "
                                 "when there is no test_path (and the data has no test split of its own)")
    split_seed: int = Field(0, description="seed of the hold-out and of the stratified train/test subsets")
    format: Literal["idx", "csv", "tsv", "parquet", "hf"] | None = None
    text_column: str = "text"
    label_column: str = "label"
    image_shape: list[int] | None = None
    num_classes: int | None = Field(None, ge=2)
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    max_length: int = Field(64, ge=4, le=512, description="tokens per sentence for text datasets")

    @model_validator(mode="after")
    def _check(self):
        from raykd import data

        if self.name == "user":
            if not self.path:
                raise ValueError("data.path is required when data.name is 'user'")
            for field in ("path", "test_path"):
                value = getattr(self, field)
                if value and not Path(value).expanduser().exists():
                    raise ValueError(f"data.{field} {value}: no such file or directory")
        elif self.name not in data.DATASETS:
            raise ValueError(data.DATASETS.unknown_message(self.name) + " (data.name)")
        elif self.path or self.test_path:
            raise ValueError(f"data.path is for your own data: set data.name to 'user' (not {self.name!r}) to read it")
        return self


class ModelSpec(Strict):
    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(None, description="display name in tables and plots")

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        from raykd import models

        if v not in models.MODELS:
            raise ValueError(models.MODELS.unknown_message(v))
        return v

    @model_validator(mode="after")
    def _args(self):
        from raykd import models

        models.check_args(self.name, self.args)
        return self

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        args = ",".join(f"{k}={v}" for k, v in sorted(self.args.items()))
        return f"{self.name}({args})" if args else self.name


class TrainConfig(Strict):
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_fraction: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    seed: int = 0


class TeacherConfig(ModelSpec):
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: str | None = Field(None, description="use these weights (safetensors file, or a directory holding "
                                   "model.safetensors) instead of training (and caching) the teacher")

    @field_validator("checkpoint")
    @classmethod
    def _exists(cls, v):
        """An existing file, made absolute (sweep trials validate the config again in their own directory)."""
        if v is None:
            return v
        p = Path(v).expanduser()
        if not (p / "model.safetensors" if p.is_dir() else p).is_file():
            raise ValueError(f"no weights at {v!r} (expected a safetensors file or a directory holding "
                             "model.safetensors); fix the path, or remove teacher.checkpoint to train the teacher")
        return str(p.resolve())


class LossSpec(Strict):
    """One term of a weighted loss: a registered loss's ``name``, its ``weight`` and its parameters (the
    other keys), which are validated against the parameter model the loss is registered with."""

    model_config = ConfigDict(extra="allow")
    name: str
    weight: float = 1.0

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        from raykd import losses

        if v not in losses.LOSSES:
            raise ValueError(losses.LOSSES.unknown_message(v))
        return v

    @model_validator(mode="after")
    def _params(self):
        from raykd.losses import check_loss_params

        check_loss_params(self.name, self.params)
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The loss's parameters as written in the config (validated; defaults not filled in)."""
        return dict(self.model_extra or {})

    def as_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight, **self.params}


class EngineConfig(Strict):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel student training)")
    use_gpu: bool | None = Field(None, description="None: use GPUs when the cluster has them")
    cpus_per_worker: float = Field(1.0, gt=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy of the Train workers; SPREAD puts them on different nodes when they fit")
    teacher_placement: Literal["colocated", "actor_pool"] = "colocated"
    teacher_actors: int = Field(1, ge=1, description="actor_pool: number of teacher-inference actors")
    teacher_gpus: float = Field(0.25, ge=0, le=1, description="actor_pool: GPU fraction per teacher actor when GPUs exist")
    teacher_cpus: float = Field(0.5, gt=0, description="actor_pool: CPUs per teacher actor; the workers and actors together must leave Ray Data some CPU room, or the stream stalls")
    teacher_cache: bool = Field(False, description="compute frozen-teacher outputs once and reuse them (fixed data only)")
    teacher_cache_max_gb: float = Field(4.0, gt=0, description="larger teacher outputs are computed online instead of cached")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")
    max_failures: int = Field(0, ge=0, description="Ray Train FailureConfig(max_failures)")
    storage_path: str | None = Field(None, description="where Ray Train keeps checkpoints (default: output_dir/ray)")


SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "quniform")


def _check_space_entry(key: str, spec: dict[str, Any]) -> None:
    """One ``sweep.space`` entry must be ``{grid|choice: [values]}`` or ``{uniform|loguniform|randint: [low, high]}``
    or ``{quniform: [low, high, step]}``."""
    if len(spec) != 1 or next(iter(spec)) not in SPACE_KINDS:
        raise FieldError(key, f"expected one of {{{', '.join(SPACE_KINDS)}: ...}}, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if kind in ("grid", "choice"):
        if not isinstance(values, list) or not values:
            raise FieldError(key, f"{kind} needs a non-empty list of values, got {values!r}")
        return
    names = ["low", "high", "step"][: 3 if kind == "quniform" else 2]

    def number(x: Any) -> float | None:
        try:
            f = float(x) if not isinstance(x, bool) else math.nan
        except (TypeError, ValueError):
            return None
        return f if math.isfinite(f) else None

    nums = [number(x) for x in values] if isinstance(values, list) else []
    if len(nums) != len(names) or None in nums or (kind == "randint" and any(not isinstance(x, int) for x in values)):
        kind_of = "integers" if kind == "randint" else "finite numbers"
        raise FieldError(key, f"{kind} needs [{', '.join(names)}] as {kind_of}, got {values!r}")
    if nums[0] >= nums[1] or (kind == "loguniform" and nums[0] <= 0):
        raise FieldError(key, f"{kind} needs low < high{' and low > 0' if kind == 'loguniform' else ''}, got {values!r}")


class SweepConfig(Strict):
    """A Ray Tune search over config fields (see :mod:`raykd.sweep.tune`)."""

    space: dict[str, dict[str, Any]] = Field(..., min_length=1, description="dotted config key -> {grid|choice|uniform|loguniform|randint|quniform: ...}")
    metric: Literal["ds", "accuracy"] = "ds"
    num_samples: int = Field(1, ge=1)
    search: Literal["basic", "optuna"] = "basic"
    scheduler: Literal["none", "asha"] = "none"
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(2, ge=2)
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as many as the cluster's CPUs fit")
    max_failures: int = Field(1, ge=0, description="retries of a failed trial (e.g. a lost node)")
    label: str = Field("kd", description="method label of the sweep's rows")

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for key, spec in v.items():
            _check_space_entry(key, spec)
        return v


def config_key_problem(root: BaseModel, key: str) -> str | None:
    """Why the dotted ``key`` (a sweep axis) names no field of the config ``root``; None when it names one.

    In a kd config ``student`` stands for ``students.0``. Where a loss's parameters or a model's
    arguments are addressed, the names come from the loss's parameter model or the model's factory."""
    from raykd import models
    from raykd.losses import loss_params

    shown = key.split(".")
    parts = list(shown)
    offset = 0
    if parts[0] == "student" and "students" in type(root).model_fields:
        parts, offset = ["students", "0", *parts[1:]], 1

    def no_such(i: int, part: str, known: list[str]) -> str:
        close = difflib.get_close_matches(part, known, n=1, cutoff=0.5)
        where = ".".join(shown[: i - offset]) or "the config"
        hint = f"did you mean {'.'.join(shown[: i - offset] + [close[0]])!r}?" if close else f"{where} has: {', '.join(sorted(known))}"
        return f"no such config key ({where} has no {part!r}); {hint}"

    cur: Any = root
    for i, part in enumerate(parts):
        if isinstance(cur, LossSpec) and part not in type(cur).model_fields:
            params = loss_params(cur.name)
            if part in params.model_fields or params.model_config.get("extra") == "allow":
                return None  # a loss parameter; its values are checked when each trial's config is validated
            return no_such(i, part, [*type(cur).model_fields, *params.model_fields])
        if isinstance(cur, ModelSpec) and part == "args":
            args = models.args_model(cur.name)
            if len(parts) > i + 1 and parts[i + 1] not in args.model_fields and args.model_config.get("extra") != "allow":
                return no_such(i + 1, parts[i + 1], list(args.model_fields))
            return None
        if isinstance(cur, BaseModel):
            if part not in type(cur).model_fields:
                return no_such(i, part, list(type(cur).model_fields))
            cur = getattr(cur, part)
        elif isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                return f"{'.'.join(shown[: i - offset])} has {len(cur)} entries; index them 0..{len(cur) - 1}"
            cur = cur[int(part)]
        elif isinstance(cur, dict) or cur is None:
            return None  # an open mapping, or an unset optional value: checked when each trial's config is validated
        else:
            return f"{'.'.join(shown[: i - offset])} is a single value; it has no {part!r}"
    return None


def check_layer_maps(losses: list[LossSpec], field: str, teacher: ModelSpec, students: list[ModelSpec]) -> None:
    """Refuse a loss's ``layer_map`` that names a layer the teacher or a student lacks, for the models
    whose depths the config itself says (BERTs: ``raykd.distill.lm.bert_shape``, no weights loaded)."""
    from raykd.distill.lm import BERT_MODELS, bert_shape
    from raykd.losses import NEEDS, check_loss_params

    def depth(m: ModelSpec) -> int | None:
        return bert_shape(m.name, m.args)["num_layers"] if m.name in BERT_MODELS else None

    for i, spec in enumerate(losses):
        pairs = check_loss_params(spec.name, spec.params).get("layer_map")
        if not pairs:
            continue
        attention = NEEDS.get(spec.name) == {"attentions"}  # attention maps are numbered 1..N; hidden states 0..N
        first, what = (1, "attention maps") if attention else (0, "hidden states")
        for t_i, s_i in pairs:
            checks = [("teacher", t_i, "the teacher", teacher)] + \
                     [("student", s_i, f"students.{j}", s) for j, s in enumerate(students)]
            for role, layer, label, m in checks:
                n = depth(m)
                if n is not None and not first <= layer <= n:
                    zero = " (0 = the embeddings)" if first == 0 else ""
                    raise FieldError(f"{field}.{i}.layer_map", f"pair [{t_i}, {s_i}] names {role} layer {layer}, but "
                                     f"{label} ({m.display}) has {what} {first}..{n}{zero}; name layers in that range")


class BaseRunConfig(Strict):
    name: str = "raykd"
    method: str
    output_dir: str = "runs/raykd"
    seed: int = 0
    ray: RayConfig = Field(default_factory=RayConfig)
    metric: MetricConfig = Field(default_factory=MetricConfig)

    @model_validator(mode="after")
    def _sweep_keys(self):
        sweep = getattr(self, "sweep", None)
        for key in sweep.space if sweep is not None else ():
            problem = config_key_problem(self, key)
            if problem:
                raise FieldError(f"sweep.space.{key}", problem)
        return self


class DistillConfig(BaseRunConfig):
    """Teacher -> students distillation on the Ray Train engine (CNNs on images, BERTs on text)."""

    method: Literal["kd"] = "kd"
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=lambda: TeacherConfig(name="cnn", args={"widths": [32, 64], "hidden": 128}))
    students: list[ModelSpec] = Field(default_factory=lambda: [ModelSpec(name="cnn", args={"widths": [8, 16], "hidden": 32})], min_length=1)
    losses: list[LossSpec] = Field(default_factory=lambda: [LossSpec(name="kd", temperature=4.0), LossSpec(name="ce", weight=0.5)], min_length=1)
    train: TrainConfig = Field(default_factory=TrainConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    allow_larger_student: bool = Field(False, description="permit a student with more parameters than its teacher")
    baseline_scratch: bool = Field(False, description="also train each student from scratch with CE on the same budget")
    sweep: SweepConfig | None = None
    student_init: Literal["random", "teacher_layers"] = Field(
        "random", description="BERT students: random weights, or the teacher's embeddings + uniformly skipped layers (equal widths)")

    @model_validator(mode="after")
    def _student_init(self):
        from raykd.distill.lm import check_student_init

        check_student_init(self.student_init, (self.teacher.name, self.teacher.args),
                           [(s.name, s.args) for s in self.students])
        return self

    @model_validator(mode="after")
    def _sizes(self):
        if self.allow_larger_student:
            return self
        from raykd.models.size import param_count_on_meta

        num_classes = self.data.num_classes
        t = param_count_on_meta(self.teacher.name, self.teacher.args, num_classes)
        for i, s in enumerate(self.students):
            n = param_count_on_meta(s.name, s.args, num_classes)
            if t is not None and n is not None and n > t:
                raise ValueError(f"students[{i}] has {n:,} parameters, more than the teacher's {t:,}; "
                                 "shrink it or set allow_larger_student: true")
        return self

    @model_validator(mode="after")
    def _layer_maps(self):
        check_layer_maps(self.losses, "losses", self.teacher, self.students)
        return self


# method name -> (module, class) of its config model; imported lazily so a method's heavy
# dependencies (e.g. RLlib) load only when that method is used.
METHOD_CONFIGS: dict[str, tuple[str, str]] = {
    "kd": ("raykd.config", "DistillConfig"),
}


# method -> (section key, module, class) for methods whose settings live in one section model
# defined next to the method (e.g. ``rl:`` validated by ``raykd.rl.settings.RLSettings``).
METHOD_SECTIONS: dict[str, tuple[str, str, str]] = {
    "dpd": ("rl", "raykd.rl.settings", "RLSettings"),
    "dataset_distill": ("dataset_distill", "raykd.distill.dataset", "DatasetDistillSettings"),
    "self_distill": ("self_distill", "raykd.distill.self_distill", "SelfDistillSettings"),
    "dynabert": ("dynabert", "raykd.distill.dynabert", "DynaBertSettings"),
}
_SECTION_CLASSES: dict[str, type] = {}
# section methods whose configs may carry a `sweep:` section (run by `raykd sweep`, see raykd.sweep.tune)
SWEEPABLE_SECTIONS = ("dataset_distill",)


def register_method_config(method: str, module: str, cls: str) -> None:
    METHOD_CONFIGS[method] = (module, cls)


def _section_class(method: str) -> type[BaseRunConfig]:
    """A run config with the shared top-level fields plus the method's own section."""
    from typing import Literal as _Literal

    from pydantic import create_model

    if method not in _SECTION_CLASSES:
        section, mod, cls = METHOD_SECTIONS[method]
        model = getattr(importlib.import_module(mod), cls)
        fields = {section: (model, Field(default_factory=model))}
        if method in SWEEPABLE_SECTIONS:
            fields["sweep"] = (SweepConfig | None, None)
        _SECTION_CLASSES[method] = create_model(
            f"{cls}Run", __base__=BaseRunConfig, method=(_Literal[method], method), **fields)
    return _SECTION_CLASSES[method]


def _config_class(method: Any) -> type[BaseRunConfig]:
    if isinstance(method, str) and method in METHOD_SECTIONS:
        return _section_class(method)
    if not isinstance(method, str) or method not in METHOD_CONFIGS:
        known = list(METHOD_CONFIGS) + list(METHOD_SECTIONS)
        close = difflib.get_close_matches(str(method), known, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"
        raise UserError(f"method: unknown method {method!r}; {hint}")
    mod, cls = METHOD_CONFIGS[method]
    return getattr(importlib.import_module(mod), cls)


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur: Any = d
    for i, p in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(cur, list):
            cur = cur[int(p)]
            continue
        if p not in cur or cur[p] is None:
            cur[p] = [] if nxt.isdigit() else {}
        cur = cur[p]
    last = parts[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars/lists)."""
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=3")
        key, _, value = item.partition("=")
        try:
            _set_dotted(raw, key.strip(), safe_load(value, f"--set {item!r}"))
        except (ValueError, IndexError, TypeError, yaml.YAMLError):
            raise UserError(f"--set {item!r}: cannot set {key!r} in this config") from None
    return raw


def _format_error(err: ValidationError, cls: type[BaseModel], prefix: str = "") -> str:
    """One sentence for the first error: ``location: what is wrong`` (``prefix``: where ``cls`` sits)."""
    e = err.errors()[0]
    loc = ".".join(([prefix] if prefix else []) + _error_loc(e))
    if e["type"] == "extra_forbidden":
        parent_fields = _fields_at(cls, e["loc"][:-1])
        close = difflib.get_close_matches(str(e["loc"][-1]), parent_fields, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; known: {', '.join(parent_fields)}" if parent_fields else "")
        return f"{loc}: unknown field{hint}"
    msg = _error_message(e)
    return f"{loc}: {msg}" if loc else msg


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    cur: Any = cls
    for p in loc:
        if isinstance(p, int):
            continue
        field = getattr(cur, "model_fields", {}).get(p)
        if field is None:
            return []
        ann = field.annotation
        cur = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        if getattr(ann, "__origin__", None) is list:
            cur = ann.__args__[0]
    return sorted(getattr(cur, "model_fields", {}))


def parse_config(raw: Any, source: str = "config") -> BaseRunConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of fields at the top level, got {type(raw).__name__}")
    cls = _config_class(raw.get("method", "kd"))
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{source}: {_format_error(err, cls)}") from None
    except UserError as err:
        raise UserError(f"{source}: {err}") from None


# A config is a few hundred YAML nodes; aliases may share nodes, but a document whose aliases expand
# past this many nodes (a "billion laughs" alias bomb) is refused before it is built.
MAX_CONFIG_NODES = 100_000
MAX_CONFIG_BYTES = 1 << 20


def _expanded_size(root: yaml.Node, source: str) -> int:
    """Number of nodes the document expands to, counting each alias as a full copy of its anchor
    (memoised per shared node, so an alias bomb is counted in time linear in its composed size)."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    while stack:
        node, done = stack.pop()
        if done:
            open_.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children(node))
            continue
        if id(node) in size:
            continue
        if id(node) in open_:
            raise UserError(f"{source}: line {node.start_mark.line + 1}: an alias refers to a node that contains it; "
                            "configs must be finite: replace the alias with the values")
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children(node) if id(c) not in size)
    return size[id(root)]


def safe_load(text: str, source: str = "config") -> Any:
    """``yaml.safe_load`` (plain data only: no Python tags, nothing executed) that first composes the
    node graph and refuses a document whose aliases expand past :data:`MAX_CONFIG_NODES` nodes."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node, source)
        if n > MAX_CONFIG_NODES:
            raise UserError(f"{source}: its aliases (*name) expand to {n:,} YAML nodes, more than the {MAX_CONFIG_NODES:,} "
                            "a config may have; write the values out instead of nesting aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a YAML config file, e.g. configs/mnist_kd.yaml")
    if not path.exists():
        raise UserError(f"{path}: no such config file")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise UserError(f"{path}: cannot read the config ({e.strerror or e}); check the path and its permissions") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, too large for a config; give a YAML config file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                        "give a YAML config file saved as UTF-8") from None
    try:
        raw = safe_load(text, str(path))
    except yaml.constructor.ConstructorError as e:
        raise UserError(f"{path}: line {e.problem_mark.line + 1}: tag {e.problem.split()[-1] if e.problem else ''} is not "
                        "allowed; configs are plain data and cannot execute code") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise UserError(f"{path}: {where}not valid YAML ({getattr(e, 'problem', e)})") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a config; flatten the YAML") from None
    return raw if raw is not None else {}


def load_config(path: str | Path, overrides: list[str] | None = None) -> BaseRunConfig:
    """Read, override and validate a config file; raises :class:`UserError` on any bad input."""
    raw = apply_overrides(load_yaml(path), overrides)
    return parse_config(raw, str(path))
