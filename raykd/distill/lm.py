"""Language-model distillation (Park, Kim, Yang, EMNLP 2021, "Distilling Linguistic Context for
Language Model Compression"), run as ``method: kd`` on the Ray Train engine.

1. Teacher: the pretrained MiniLM-L6-H384 backbone (``minilm-l6``) fine-tuned with cross-entropy on a
   text classification dataset, cached under ``$RAYKD_HOME/teachers`` (``raykd.distill.kd.ensure_teacher``).
2. Students: BERT classifiers of any depth and width (``bert`` with ``num_layers``/``hidden_size``),
   initialised either at random (``student_init: random``) or from the teacher
   (``student_init: teacher_layers``): embeddings, and for student layer j the teacher layer
   round(j * n_t / n_s) -- the uniform layer skipping the paper uses for its layer map -- plus pooler
   and classifier. Copying needs equal widths; a narrower student must start at random.
3. Objective: any weighted sum of the registered losses, e.g. the paper's CKD objective

       L = KD_T(z_s, z_t) + w1 WR_pair + w2 WR_triple + w3 LTR_pair + w4 LTR_triple   (relations: raykd.losses.ckd)

   or TinyBERT's hidden-state MSE through a learned projection (``hidden_mse``), with or without CE.
4. Students are saved with ``save_pretrained`` plus the tokenizer, so
   ``AutoModelForSequenceClassification.from_pretrained(dir)`` loads them.

This module holds what is specific to language models: the teacher-layer initialisation and its
config check. :class:`raykd.distill.base.ClassifyMethod` calls :func:`init_student_from_teacher`
when a task's ``extra["student_init"]`` is ``"teacher_layers"``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from raykd.errors import UserError
from raykd.losses.kd import uniform_layer_map

STUDENT_INITS = ("random", "teacher_layers")
# The MiniLM teacher's fine-tuning recipe shared by the lm_* and dynabert_* configs and benchmarks, so
# they all reuse one cached teacher (the cache key hashes this recipe and the dataset).
MINILM_TEACHER_TRAIN = {"epochs": 2, "batch_size": 32, "lr": 1e-4, "optimizer": "adamw", "weight_decay": 0.01,
                        "schedule": "linear", "warmup_fraction": 0.1}
BERT_MODELS = ("bert", "minilm-l6")
# Architecture of the registered pretrained teacher (raykd.models.bert): layers, width, heads, FFN.
MINILM_SHAPE = {"num_layers": 6, "hidden_size": 384, "num_heads": 12, "intermediate_size": 1536}


def bert_shape(name: str, args: dict[str, Any]) -> dict[str, int]:
    """Layers, width, heads and FFN size of a registered BERT model spec (without building it)."""
    if name == "minilm-l6":
        return dict(MINILM_SHAPE)
    hidden = int(args.get("hidden_size", 384))
    return {"num_layers": int(args.get("num_layers", 3)), "hidden_size": hidden,
            "num_heads": int(args.get("num_heads") or max(1, hidden // 64)),
            "intermediate_size": int(args.get("intermediate_size") or 4 * hidden)}


def check_student_init(init: str, teacher: tuple[str, dict], students: list[tuple[str, dict]]) -> None:
    """Raise ``ValueError`` (a config error) when ``teacher_layers`` cannot initialise every student."""
    if init == "random":
        return
    t_name, t_args = teacher
    if t_name not in BERT_MODELS:
        raise ValueError(f"student_init: teacher_layers needs a BERT teacher (one of {', '.join(BERT_MODELS)}), got {t_name!r}")
    t = bert_shape(t_name, t_args)
    for i, (s_name, s_args) in enumerate(students):
        if s_name != "bert":
            raise ValueError(f"student_init: teacher_layers needs BERT students, but students[{i}] is {s_name!r}")
        s = bert_shape(s_name, s_args)
        for key in ("hidden_size", "num_heads", "intermediate_size"):
            if s[key] != t[key]:
                raise ValueError(f"student_init: teacher_layers copies teacher layers, so students[{i}].args.{key} "
                                 f"must equal the teacher's {t[key]} (got {s[key]}); use student_init: random for it")
        if s["num_layers"] > t["num_layers"]:
            raise ValueError(f"student_init: students[{i}] has {s['num_layers']} layers, more than the teacher's "
                             f"{t['num_layers']} to copy from")


def teacher_layer_choice(n_teacher: int, n_student: int) -> list[int]:
    """0-based teacher layer copied into each student layer: uniform skipping, last layer kept.

    A 6-layer teacher and a 3-layer student: teacher layers 2, 4, 6 (0-based [1, 3, 5]).
    """
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


def init_student_from_teacher(student: nn.Module, teacher_spec: dict, num_classes: int) -> list[int]:
    """Build the trained teacher described by a task's ``teacher`` dict and copy its layers into ``student``."""
    from raykd import models as M
    from raykd.engine.checkpoint import load_weights

    if not teacher_spec or not teacher_spec.get("weights"):
        raise UserError("student_init: teacher_layers needs trained teacher weights, but the task has none")
    teacher = M.build(teacher_spec["name"], num_classes=num_classes, **teacher_spec.get("args", {}))
    load_weights(teacher, teacher_spec["weights"])
    return copy_teacher_layers(student, teacher)
