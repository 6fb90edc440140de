"""Any Hugging Face sequence classifier as a teacher or a student: ``name: hf``.

``args`` name where the model comes from and what to change:

* ``path``: a directory written by ``save_pretrained`` (or a hub id, where the hub is reachable; never
  needed). Loaded with ``AutoModelForSequenceClassification``; its own tokenizer comes with it. A
  directory that holds a classification head for the data's classes is used as trained (a teacher is
  then not trained again); an encoder without one gets a fresh head.
* ``config``: a ``model_type`` transformers knows (``bert``, ``roberta``, ``distilbert``, ``electra``,
  ...) or a directory with a ``config.json``: a fresh, randomly initialised model of that family.
* any further key overrides the config (``num_hidden_layers: 2``, ``hidden_size: 256``, or a family's
  own names such as DistilBERT's ``n_layers``/``dim``); keys the config does not have are refused.
* ``tokenizer``: a directory with tokenizer files or a ``tokenizer.json`` (e.g. trained with the
  ``tokenizers`` library); default: the model directory's own, else MiniLM's BERT WordPiece. A fresh
  model's vocabulary size and special token ids follow its tokenizer.

Every model is loaded with eager attention, so hidden states and attention maps are returned.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raykd.errors import UserError
from raykd.models import register_model

_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


def _local(path: str | None) -> Path | None:
    p = Path(path).expanduser() if path else None
    return p.resolve() if p is not None and p.exists() else None


def _hub_allowed() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True")


def _source(path: str, what: str) -> str:
    """A local directory (absolute) or a hub id; a missing local-looking path is refused by name."""
    local = _local(path)
    if local is not None:
        if not local.is_dir():
            raise UserError(f"{what}: {path!r} is a file; give the directory written by save_pretrained")
        return str(local)
    if path.startswith((".", "/", "~")) or path.count("/") > 1:  # hub ids are "name" or "owner/name"
        raise UserError(f"{what}: no directory {path!r}; give a directory written by save_pretrained")
    if not _hub_allowed():
        raise UserError(f"{what}: no directory {path!r}, and the Hugging Face Hub is off (HF_HUB_OFFLINE=1); "
                        "download the model and give its directory")
    return path  # a hub id


@functools.lru_cache(maxsize=32)
def load_tokenizer(tokenizer: str | None = None, path: str | None = None):
    """The tokenizer of an ``hf`` model (see the module docstring for the order of sources)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if tokenizer:
        local = _local(tokenizer)
        if local is not None and local.is_file():
            tok = PreTrainedTokenizerFast(tokenizer_file=str(local))
            return _with_pad(tok, tokenizer)
        try:
            return _with_pad(AutoTokenizer.from_pretrained(_source(tokenizer, "tokenizer")), tokenizer)
        except (OSError, ValueError) as e:
            raise UserError(f"tokenizer: cannot load a tokenizer from {tokenizer!r}: {e}") from None
    if path:
        try:
            return _with_pad(AutoTokenizer.from_pretrained(_source(path, "path")), path)
        except (OSError, ValueError) as e:
            raise UserError(f"path: {path!r} has no tokenizer ({e}); give args.tokenizer") from None
    from raykd.models.bert import tokenizer as minilm_tokenizer

    return minilm_tokenizer()


def _with_pad(tok, where: str):
    """Tokenizers need a padding token to batch; take one from the vocabulary if none is declared."""
    if tok.pad_token is None:
        vocab = tok.get_vocab()
        for cand in ("[PAD]", "<pad>", "<|padding|>", "<unk>", "[UNK]"):
            if cand in vocab:
                tok.pad_token = cand
                break
        else:
            raise UserError(f"tokenizer {where!r} has no padding token ([PAD] or <pad>); add one")
    return tok


def tokenizer_fingerprint(tok) -> str:
    """Identifies what a tokenizer produces: its whole pipeline (normaliser, pre-tokeniser, vocabulary,
    post-processor) for fast tokenizers, else its class and vocabulary."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:  # padding/truncation state changes with use; what makes the ids does not
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        blob = json.dumps(state, sort_keys=True)
    else:
        blob = json.dumps([type(tok).__name__, sorted(tok.get_vocab().items())])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _config(path: str | None, config: str | None, overrides: dict[str, Any]):
    """The model's config: from ``path`` or ``config`` (a model_type or a directory), overrides applied."""
    from transformers import AutoConfig, CONFIG_MAPPING

    if (path is None) == (config is None):
        raise TypeError("give exactly one of path (a trained model) or config (a fresh model of a family)")
    if path is not None:
        from raykd.models import hf_export  # noqa: F401 - registers raykd_pruned_bert (exported DynaBERT sub-networks)

        try:
            cfg = AutoConfig.from_pretrained(_source(path, "path"))
        except (OSError, ValueError) as e:
            raise UserError(f"path: cannot read a model config from {path!r}: {e}") from None
    elif _local(config) is not None:
        cfg = AutoConfig.from_pretrained(str(_local(config)))
    elif config in CONFIG_MAPPING:
        cfg = AutoConfig.for_model(config)
    else:
        close = difflib.get_close_matches(config, list(CONFIG_MAPPING.keys()), n=1)
        raise TypeError(f"config {config!r} is neither a directory nor a model_type transformers knows"
                        + (f"; did you mean {close[0]!r}?" if close else ""))
    known = set(cfg.to_dict()) | set(getattr(cfg, "attribute_map", {}))
    for key, value in overrides.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            raise TypeError(f"{cfg.model_type} configs have no setting {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        setattr(cfg, key, value)
    return cfg


def _fit_tokenizer(cfg, tok) -> None:
    """A fresh model reads its tokenizer's ids: vocabulary size and special tokens from the tokenizer."""
    cfg.vocab_size = len(tok)
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tok, attr, None)
        if value is not None:
            setattr(cfg, attr, value)


def _shape(num_classes: int = 2, path: str | None = None, config: str | None = None, tokenizer: str | None = None,
           **overrides) -> nn.Module:
    """The model's architecture without its weights (what :func:`hf` builds, for config checks)."""
    from transformers import AutoModelForSequenceClassification

    cfg = _config(path, config, overrides)
    cfg.num_labels = num_classes
    if path is None and tokenizer is None and cfg.vocab_size < 30522:
        cfg.vocab_size = 30522  # MiniLM's vocabulary
    return AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")


def _tokenizer(path: str | None = None, config: str | None = None, tokenizer: str | None = None, **_):
    return load_tokenizer(tokenizer, path)


@register_model("hf", meta=_shape, tokenizer=_tokenizer)
def hf(num_classes: int = 2, path: str | None = None, config: str | None = None, tokenizer: str | None = None,
       label_names: list[str] | None = None, **overrides) -> nn.Module:
    """A Hugging Face sequence classifier, from a directory (``path``) or fresh from a config (``config``)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per worker per load says nothing to a user
    cfg = _config(path, config, overrides)
    if path is None:
        cfg.num_labels = num_classes
        _fit_tokenizer(cfg, load_tokenizer(tokenizer, None))
        model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")
        model.raykd_trained_head = False
        return model
    saved_labels = dict(cfg.id2label or {}) if cfg.num_labels == num_classes else {}
    cfg.num_labels = num_classes
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            _source(path, "path"), config=cfg, attn_implementation="eager", ignore_mismatched_sizes=True,
            output_loading_info=True)
    except (OSError, ValueError) as e:
        raise UserError(f"path: cannot load a model from {path!r}: {e}") from None
    head_missing = bool(info.get("missing_keys")) or bool(info.get("mismatched_keys"))
    model.raykd_trained_head = not head_missing
    if model.raykd_trained_head and label_names:
        _align_labels(model, saved_labels, list(label_names), path)
    return model


def _align_labels(model: nn.Module, saved: dict, names: list[str], path: str) -> None:
    """Make a trained head's outputs follow the data's label order: a head saved with the same class
    names in another order is permuted; generic names (LABEL_0, ...) are taken in order; other names
    are refused (the model was trained for other classes)."""
    saved_names = [str(saved.get(i, saved.get(str(i), f"LABEL_{i}"))) for i in range(len(names))]
    if all(_GENERIC_LABEL.match(n) for n in saved_names) or saved_names == names:
        return
    if sorted(saved_names) != sorted(names):
        raise UserError(f"path: the model at {path!r} was trained for the classes {saved_names}, but the data's are "
                        f"{names}; use data with those classes, or a model without a trained head")
    order = [saved_names.index(n) for n in names]
    head = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == len(names)][-1]
    with torch.no_grad():
        head.weight.copy_(head.weight[order])
        if head.bias is not None:
            head.bias.copy_(head.bias[order])
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
