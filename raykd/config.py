"""Typed configs (pydantic). The only place a config is validated.

A config is a UTF-8 YAML file loaded with ``safe_load`` semantics (no Python tags, nothing executed;
aliases that expand past :data:`MAX_CONFIG_NODES` nodes are refused) into the model for its
``method``. Unknown keys, wrong types, non-finite numbers, booleans where numbers are meant,
impossible values, unknown registry names, unknown or bad loss parameters and model arguments,
layer maps beyond the models' depths, sweep axes that name no field and missing files fail here,
before any Ray work, with one sentence naming the field (the CLI exits 2).

One layout for every method: the top level shared by all (``name``, ``method``, ``output_dir``,
``seed``, ``ray``, ``metric``, ``plugins``: :class:`RunConfig`), the shared sections the method reads
(``data``, ``teacher``, ``student``/``students``, ``losses``, ``train``, ``engine``, ``sweep``:
:data:`SECTION_TYPES`) and one section named after the method for what is its own (its settings
model, :class:`raykd.method.Method`). :func:`config_class` builds the model of a method from these.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_serializer,
                      model_validator)

from raykd.errors import UserError
from raykd.registry import DATASETS, FILE_ARGS, LOSSES, METHODS, MODELS, NEEDS, args_model, check_args, check_loss_params, loss_params, meta_model
from raykd.schema import FieldError, Strict, _error_loc, _error_message

__all__ = ["FieldError", "Strict", "RunConfig", "DataConfig", "ModelSpec", "TeacherConfig", "TrainConfig", "LossSpec",
           "EngineConfig", "SweepConfig", "RayConfig", "MetricConfig", "config_class", "parse_config", "load_config"]


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
    validation: int | None = Field(None, ge=1, description="rows carved from the training split (stratified, seeded by "
                                   "split_seed, never trained on) on which each model's best epoch is chosen; the test "
                                   "split is then read once, at the end")
    max_length: int = Field(64, ge=4, le=512, description="tokens per sentence for text datasets")

    @model_validator(mode="after")
    def _check(self):
        if self.name == "user":
            if not self.path:
                raise ValueError("data.path is required when data.name is 'user'")
            for field in ("path", "test_path"):
                value = getattr(self, field)
                if value and not Path(value).expanduser().exists():
                    raise ValueError(f"data.{field} {value}: no such file or directory")
        elif self.name not in DATASETS:
            raise ValueError(DATASETS.unknown_message(self.name) + " (data.name)")
        elif self.path or self.test_path:
            raise ValueError(f"data.path is for your own data: set data.name to 'user' (not {self.name!r}) to read it")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # an unset validation is left out, so the hashes of configs written before it (run ids, caches) stay as they were
        out = handler(self)
        if self.validation is None and isinstance(out, dict):
            out.pop("validation", None)
        return out


class ModelSpec(Strict):
    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(None, description="display name in tables and plots")

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        if v not in MODELS:
            raise ValueError(MODELS.unknown_message(v))
        return v

    @model_validator(mode="after")
    def _args(self):
        # local files a model reads are made absolute here, on the driver: Ray workers and sweep trials
        # run in other directories
        for key in FILE_ARGS:
            value = self.args.get(key)
            if isinstance(value, str) and value and Path(value).expanduser().exists():
                self.args[key] = str(Path(value).expanduser().resolve())
        check_args(self.name, self.args)
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
        if v not in LOSSES:
            raise ValueError(LOSSES.unknown_message(v))
        return v

    @model_validator(mode="after")
    def _params(self):
        check_loss_params(self.name, self.params)
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The loss's parameters as written in the config (validated; defaults not filled in)."""
        return dict(self.model_extra or {})

    def as_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight, **self.params}


class EngineConfig(Strict):
    num_workers: int | Literal["auto"] = Field(
        "auto", description="Ray Train workers (data-parallel student training); auto: one per GPU, else one per "
                            "node (on CPUs, a worker's threads beat a second worker on the same cores), and one per "
                            "trial in a sweep")
    use_gpu: bool | None = Field(None, description="None: use GPUs when the cluster has them")
    cpus_per_worker: float | Literal["auto"] = Field(
        "auto", description="CPUs (torch threads) per worker; auto: a node's CPUs shared by its workers, and 1 "
                            "where runs go side by side (sweep trials, self-distillation lanes)")
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

    @field_validator("num_workers", "cpus_per_worker")
    @classmethod
    def _positive(cls, v, info):
        if v != "auto" and not v > 0 or (info.field_name == "num_workers" and v != "auto" and v < 1):
            raise ValueError(f"expected auto or a number >= {1 if info.field_name == 'num_workers' else 'above 0'}, got {v!r}")
        return v

    def resolved(self, concurrent: bool = False) -> "EngineConfig":
        """This engine with ``auto`` replaced by numbers for the cluster Ray is connected to (or this
        machine). ``concurrent``: several such runs share the cluster (sweep trials, self-distillation
        lanes): auto then means one worker with one CPU per run."""
        workers, cpus = self.num_workers, self.cpus_per_worker
        if workers != "auto" and cpus != "auto":
            return self
        nodes, gpus = cluster_shape()
        use_gpu = gpus > 0 if self.use_gpu is None else self.use_gpu
        if workers == "auto":
            workers = 1 if concurrent else (max(1, int(gpus)) if use_gpu else max(1, len(nodes)))
        if cpus == "auto":
            if concurrent:
                cpus = 1.0
            else:
                spare = self.teacher_actors * self.teacher_cpus if self.teacher_placement == "actor_pool" else 0.0
                per_node = max(1, math.ceil(workers / max(1, len(nodes))))
                cpus = float(max(1, math.floor((min(nodes) - spare) / per_node))) if nodes else 1.0
        return self.model_copy(update={"num_workers": int(workers), "cpus_per_worker": float(cpus)})


def cluster_shape() -> tuple[list[float], float]:
    """CPUs of each alive node and the GPUs in all, of the Ray cluster this process is connected to
    (this machine's cores when Ray is not running)."""
    import os

    try:
        import ray

        if ray.is_initialized():
            nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
            return [c for c in nodes if c > 0] or [1.0], float(ray.cluster_resources().get("GPU", 0))
    except ImportError:
        pass
    return [float(os.cpu_count() or 1)], 0.0


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
            args = args_model(cur.name)
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


def model_shape(m: ModelSpec) -> dict[str, int]:
    """Layers, width, heads and FFN size of a transformers model spec, read from the model built on the
    meta device (no weights, no files); empty for models without a ``config`` (CNNs) or that cannot be
    built that way."""
    try:
        cfg = getattr(meta_model(m.name, m.args), "config", None)
    except Exception:  # noqa: BLE001 - not buildable on meta: nothing is checked here, the run reports it
        return {}
    if cfg is None or not hasattr(cfg, "num_hidden_layers"):
        return {}
    return {"num_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
            "num_heads": cfg.num_attention_heads, "intermediate_size": getattr(cfg, "intermediate_size", None)}


def check_layer_maps(losses: list[LossSpec], field: str, teacher: ModelSpec, students: list[ModelSpec]) -> None:
    """Refuse a loss's ``layer_map`` that names a layer the teacher or a student lacks, for models whose
    depth shows when they are built on the meta device (transformers models: ``config.num_hidden_layers``)."""
    def depth(m: ModelSpec) -> int | None:
        return model_shape(m).get("num_layers")

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


class RunConfig(Strict):
    """The top level every config shares; :func:`config_class` adds the method's shared sections and
    its own section (named after the method)."""

    name: str = Field("raykd", description="name of the run (with the config's hash, its run id: a rerun resumes it)")
    method: str
    output_dir: str = "runs/raykd"
    seed: int = 0
    ray: RayConfig = Field(default_factory=RayConfig)
    metric: MetricConfig = Field(default_factory=MetricConfig)
    plugins: list[str] = Field(default_factory=list, description="your own code: module names or .py files, imported "
                               "before the config is validated and in the Ray workers (register losses, models, ...)")

    @model_validator(mode="after")
    def _sweep_keys(self):
        sweep = getattr(self, "sweep", None)
        for key in sweep.space if sweep is not None else ():
            problem = config_key_problem(self, key)
            if problem:
                raise FieldError(f"sweep.space.{key}", problem)
        return self

    @property
    def settings(self) -> Any:
        """The method's own section (``cfg.kd``, ``cfg.dpd``, ...), or None for a method without one."""
        return getattr(self, self.method, None)


# shared section -> (type, default when the method gives none)
SECTION_TYPES: dict[str, tuple[Any, Callable[[], Any]]] = {
    "data": (DataConfig, DataConfig),
    "teacher": (TeacherConfig, lambda: TeacherConfig(name="cnn", args={"widths": [32, 64], "hidden": 128})),
    "students": (list[ModelSpec], lambda: [ModelSpec(name="cnn", args={"widths": [8, 16], "hidden": 32})]),
    "student": (ModelSpec, lambda: ModelSpec(name="cnn", args={"widths": [8, 16], "hidden": 32})),
    "losses": (list[LossSpec], lambda: [LossSpec(name="kd", temperature=4.0), LossSpec(name="ce", weight=0.5)]),
    "train": (TrainConfig, TrainConfig),
    "engine": (EngineConfig, EngineConfig),
    "sweep": (SweepConfig | None, lambda: None),
}
_CLASSES: dict[str, type[RunConfig]] = {}


def config_class(method: str) -> type[RunConfig]:
    """The config model of registered ``method``: the shared top level, the shared sections the method
    reads (with its defaults) and its own section; anything else is an unknown field."""
    m = METHODS.get(method, "method")
    if method not in _CLASSES:
        fields: dict[str, Any] = {"method": (Literal[method], method)}  # type: ignore[valid-type]
        for section, default in m.sections.items():
            typ, fallback = SECTION_TYPES[section]
            extra = {"min_length": 1} if section in ("students", "losses") else {}
            fields[section] = (typ, Field(default_factory=default or fallback, **extra))
        if m.settings is not None:
            fields[method] = (m.settings, Field(default_factory=m.settings))
        validators = {}
        if m.check is not None:
            def _check(self, _check_fn=m.check):
                _check_fn(self)
                return self
            validators["_method_check"] = model_validator(mode="after")(_check)
        _CLASSES[method] = create_model(f"{method.title().replace('_', '')}Config", __base__=RunConfig,
                                        __validators__=validators, **fields)
    return _CLASSES[method]


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


def parse_config(raw: Any, source: str = "config", plugins: list[str] | None = None) -> RunConfig:
    """Validate a config given as plain data. Its ``plugins`` (and ``plugins``, e.g. from ``--plugin``)
    are imported first, so the names they register resolve."""
    from raykd.plugins import load_plugins

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of fields at the top level, got {type(raw).__name__}")
    listed = raw.get("plugins") or []
    if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
        raise UserError(f"{source}: plugins: expected a list of module names or .py files, got {listed!r}")
    if plugins:
        raw = {**raw, "plugins": list(dict.fromkeys([*listed, *plugins]))}
    raw = {**raw, "plugins": load_plugins(raw.get("plugins") or [], base=Path(source).parent if Path(source).suffix else None)}
    method = raw.get("method", "kd")
    if not isinstance(method, str) or method not in METHODS:
        raise UserError(f"{source}: method: {METHODS.unknown_message(str(method))}")
    if method == "dpd" and "rl" in raw:
        raise UserError(f"{source}: rl: this section is now named after its method: rename `rl:` to `dpd:`")
    cls = config_class(method)
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


def load_config(path: str | Path, overrides: list[str] | None = None, plugins: list[str] | None = None) -> RunConfig:
    """Read, override and validate a config file; raises :class:`UserError` on any bad input."""
    raw = apply_overrides(load_yaml(path), overrides)
    return parse_config(raw, str(path), plugins)
