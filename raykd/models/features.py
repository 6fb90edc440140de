"""Outputs of any module of any ``nn.Module``, by dotted path, captured with forward hooks.

A path names a submodule as ``model.named_modules()`` does (``features.3``, ``layer2.1.conv2``,
``bert.encoder.layer.5``). For Hugging Face models a path may leave out the base model's prefix
(``encoder.layer.5`` for ``bert.encoder.layer.5``, ``transformer.layer.1`` for DistilBERT's
``distilbert.transformer.layer.1``). Outputs are kept as the module returned them; the losses pick
the tensor they read (:func:`raykd.losses.features.tensor_of`).
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Iterator

import torch
from torch import nn


def resolve(model: nn.Module, path: str) -> str:
    """The full name of the module ``path`` names in ``model``; raises KeyError with the closest names.
    (Runs on every hooked forward pass: it follows the path's attributes, and lists the model's
    modules only to explain a miss.)"""
    prefix = getattr(model, "base_model_prefix", "")
    for name in (path, f"{prefix}.{path}" if prefix else None):
        if name:
            try:
                model.get_submodule(name)
                return name
            except AttributeError:
                pass
    raise KeyError(unknown_message(model, path))


def unknown_message(model: nn.Module, path: str) -> str:
    names = [n for n, _ in model.named_modules() if n]
    prefix = getattr(model, "base_model_prefix", "")
    short = [n[len(prefix) + 1:] for n in names if prefix and n.startswith(prefix + ".")]
    close = difflib.get_close_matches(path, short + names, n=1, cutoff=0.4)
    hint = f"did you mean {close[0]!r}?" if close else f"its modules include {', '.join(names[:8])}, ..."
    return f"{type(model).__name__} has no module {path!r}; {hint}"


@contextlib.contextmanager
def capture(model: nn.Module, paths: tuple[str, ...] | list[str]) -> Iterator[dict[str, object]]:
    """Within the block, ``feats[path]`` is the latest output of each named module (raw: a tensor or
    the tuple the module returned; see :func:`raykd.losses.features.tensor_of`). Hooks are removed on exit."""
    feats: dict[str, object] = {}
    if not paths:
        yield feats
        return
    handles = []
    inner = _unwrap(model)
    try:
        for path in paths:
            module = inner.get_submodule(resolve(inner, path))

            def hook(_m, _inputs, output, path=path):
                feats[path] = output

            handles.append(module.register_forward_hook(hook))
        yield feats
    finally:
        for h in handles:
            h.remove()
    for path in paths:
        if path not in feats:
            raise RuntimeError(f"module {path!r} did not run in the forward pass; name a module the model calls")


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (paths are the user's model's)."""
    return getattr(model, "module", model) if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------------------------------------
# Config-time checks of the losses against the models (models built on the meta device: no weights)
# ------------------------------------------------------------------------------------------------

def check_module_paths(losses, field: str, teacher, students) -> None:
    """Refuse a loss's ``teacher_module``/``student_module`` that names no module of the teacher or of a
    student, suggesting the closest existing path (raises :class:`raykd.schema.FieldError`)."""
    from raykd.losses.features import as_list
    from raykd.registry import meta_model
    from raykd.schema import FieldError

    for i, spec in enumerate(losses):
        for role, models in (("teacher", [("the teacher", teacher)]),
                             ("student", [(f"students.{j}", s) for j, s in enumerate(students)])):
            for path in as_list(spec.params.get(f"{role}_module")):
                for label, m in models:
                    try:
                        model = meta_model(m.name, m.args)
                    except Exception:  # noqa: BLE001 - not buildable without its files: the run checks it
                        continue
                    try:
                        resolve(model, path)
                    except KeyError as e:
                        raise FieldError(f"{field}.{i}.{role}_module", f"{label} ({m.display}): {e.args[0]}") from None


# losses that compare token by token (need one tokenisation), by what they read
_TOKEN_LEVEL = {"hidden_states", "attentions", "features"}


def tokenizer_key(m) -> str:
    """Where a model's tokenizer comes from, without loading it (equal keys: one tokenizer)."""
    from raykd.registry import _TOKENIZERS

    if m.name not in _TOKENIZERS:
        return "minilm"
    return str(m.args.get("tokenizer") or m.args.get("path") or "minilm")


def check_tokenizers(losses, field: str, teacher, students, text: bool = True) -> None:
    """Token-level losses (hidden states, attention maps, relations, module features) pair token i of the
    student with token i of the teacher, which needs one tokenisation: refused, by name, when a
    student's tokenizer differs from the teacher's. Logit losses work across tokenizers."""
    from raykd.registry import loss_reads
    from raykd.schema import FieldError

    token_level = [(i, s) for i, s in enumerate(losses) if loss_reads(s.name, s.params) & _TOKEN_LEVEL]
    if not text or not token_level:
        return
    t_key = tokenizer_key(teacher)
    for j, student in enumerate(students):
        s_key = tokenizer_key(student)
        if s_key == t_key or _fingerprint(student) == _fingerprint(teacher):
            continue
        i, spec = token_level[0]
        raise FieldError(f"{field}.{i}", f"loss {spec.name!r} compares the models token by token, but students.{j} "
                         f"({student.display}) tokenizes with {s_key!r} and the teacher with {t_key!r}; give them one "
                         "tokenizer (args.tokenizer), or use logit losses (kd, ce), which work across tokenizers")


def _fingerprint(m) -> str:
    from raykd.models.hf import tokenizer_fingerprint
    from raykd.registry import model_tokenizer

    tok = model_tokenizer(m.name, m.args)
    if tok is None:
        from raykd.models.bert import tokenizer

        tok = tokenizer()
    return tokenizer_fingerprint(tok)
