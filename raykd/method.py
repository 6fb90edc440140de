"""The one interface every distillation method implements.

A method is a settings model (its own config section, named after the method) plus a run that
returns results rows. It is registered once::

    @register_method("kd", settings=KDSettings, sections={"data": None, "teacher": None, ...},
                     check=check_kd)
    def run(cfg, ctx) -> list[dict]:
        ...

and the CLI, sweeps, jobs and the Python API all dispatch through :data:`raykd.registry.METHODS`.

* ``settings``: the pydantic model of the method's own section (``kd:``, ``dpd:``, ...), or None.
* ``sections``: the shared sections the method reads (``data``, ``teacher``, ``students``,
  ``student``, ``losses``, ``train``, ``engine``, ``sweep``), each with the method's default (a
  factory) or None for the section's own default. A config that sets a shared section the method
  does not read is refused, not ignored.
* ``check``: checks across sections (e.g. a student larger than its teacher), raising ``ValueError``
  or :class:`raykd.schema.FieldError`; runs when the config is validated, before any Ray work.
* ``prepare(cfg, ctx)``: optional; what a sweep does once before its trials (kd: train the teacher).
* ``run(cfg, ctx)``: the algorithm, readable top to bottom, given the validated config and the run's
  context (:class:`raykd.lifecycle.RunContext`: output directory, Ray storage, results keyed by item so
  that a rerun resumes).

See ``docs/new_method.md`` for a sixth method, start to finish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from raykd.registry import METHODS

SHARED_SECTIONS = ("data", "teacher", "students", "student", "losses", "train", "engine", "sweep")


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[[Any, Any], list[dict]]
    settings: type | None = None
    sections: dict[str, Callable[[], Any] | None] = field(default_factory=dict)
    check: Callable[[Any], None] | None = None
    summary: str = ""
    prepare: Callable[[Any, Any], None] | None = None
    trial_in_process: bool = False  # a sweep trial of one worker trains in the trial's own process (run honours ctx.trial_in_process)

    def __post_init__(self):
        unknown = set(self.sections) - set(SHARED_SECTIONS)
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown shared sections {sorted(unknown)}; "
                             f"choose from {', '.join(SHARED_SECTIONS)}")
        if self.name in SHARED_SECTIONS:
            raise ValueError(f"method {self.name!r}: the name of a shared section cannot name a method")


def register_method(name: str, *, settings: type | None = None, sections: dict[str, Callable[[], Any] | None] | None = None,
                    check: Callable[[Any], None] | None = None, summary: str = "",
                    prepare: Callable[[Any, Any], None] | None = None, trial_in_process: bool = False):
    """Decorator for a method's ``run(cfg, ctx)``: registers it with its settings and sections."""

    def deco(run: Callable) -> Callable:
        METHODS.register(name, Method(name, run, settings, dict(sections or {}), check,
                                      summary or next(iter((run.__doc__ or "").strip().splitlines()), ""), prepare,
                                      trial_in_process))
        return run

    return deco


def get_method(name: str) -> Method:
    return METHODS.get(name, "method")
