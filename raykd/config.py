"""Typed configs (pydantic). The only place a config is validated.

A config is a YAML file loaded with ``yaml.safe_load`` (no Python tags, nothing executed) into the
model for its ``method``. Unknown keys, wrong types, impossible values and unknown registry names
fail here, before any Ray work, with one sentence naming the field (the CLI exits 2).

Top-level fields shared by every method: ``name``, ``method``, ``output_dir``, ``seed``, ``ray``,
``metric``. Method-specific sections are validated by the section models their methods define
(``rl:`` for ``dpd``, ``dataset_distill:`` for ``dataset_distill``, ...).
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raykd.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


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
    test_path: str | None = None
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
        elif self.name not in data.DATASETS:
            raise ValueError(data.DATASETS.unknown_message(self.name) + " (data.name)")
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
    checkpoint: str | None = Field(None, description="use these weights instead of training (and caching) the teacher")


class LossSpec(BaseModel):
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
        t = (self.model_extra or {}).get("temperature")
        if t is not None and (not isinstance(t, (int, float)) or t <= 0):
            raise ValueError(f"temperature must be a positive number, got {t!r}")
        return self

    def as_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight, **(self.model_extra or {})}


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


class BaseRunConfig(Strict):
    name: str = "raykd"
    method: str
    output_dir: str = "runs/raykd"
    seed: int = 0
    ray: RayConfig = Field(default_factory=RayConfig)
    metric: MetricConfig = Field(default_factory=MetricConfig)


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
            _set_dotted(raw, key.strip(), yaml.safe_load(value))
        except (ValueError, IndexError, TypeError, yaml.YAMLError):
            raise UserError(f"--set {item!r}: cannot set {key!r} in this config") from None
    return raw


def _format_error(err: ValidationError, cls: type[BaseModel]) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        parent_fields = _fields_at(cls, e["loc"][:-1])
        close = difflib.get_close_matches(str(e["loc"][-1]), parent_fields, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; known: {', '.join(parent_fields)}" if parent_fields else "")
        return f"{loc}: unknown field{hint}"
    msg = e["msg"].removeprefix("Value error, ")
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


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.constructor.ConstructorError as e:
        raise UserError(f"{path}: line {e.problem_mark.line + 1}: tag {e.problem.split()[-1] if e.problem else ''} is not "
                        "allowed; configs are plain data and cannot execute code") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise UserError(f"{path}: {where}not valid YAML ({getattr(e, 'problem', e)})") from None
    return raw if raw is not None else {}


def load_config(path: str | Path, overrides: list[str] | None = None) -> BaseRunConfig:
    """Read, override and validate a config file; raises :class:`UserError` on any bad input."""
    raw = apply_overrides(load_yaml(path), overrides)
    return parse_config(raw, str(path))
