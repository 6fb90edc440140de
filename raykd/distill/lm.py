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

This module holds what is specific to language models: the teacher's fine-tuning recipe and the
config check of ``kd.student_init``. The layer copy itself is :func:`raykd.models.bert.copy_teacher_layers`,
which :class:`raykd.engine.task.ClassifyTask` calls when a task's ``extra["student_init"]`` is
``"teacher_layers"``.
"""

from __future__ import annotations

from raykd.config import ModelSpec, model_shape

STUDENT_INITS = ("random", "teacher_layers")
# The MiniLM teacher's fine-tuning recipe shared by the lm_* and dynabert_* configs and benchmarks, so
# they all reuse one cached teacher (the cache key hashes this recipe and the dataset).
MINILM_TEACHER_TRAIN = {"epochs": 2, "batch_size": 32, "lr": 1e-4, "optimizer": "adamw", "weight_decay": 0.01,
                        "schedule": "linear", "warmup_fraction": 0.1}


def check_student_init(init: str, teacher: ModelSpec, students: list[ModelSpec]) -> None:
    """Raise ``ValueError`` (a config error) when ``teacher_layers`` cannot initialise every student."""
    if init == "random":
        return
    t = model_shape(teacher)
    if not t:
        raise ValueError(f"kd.student_init: teacher_layers needs a transformers teacher, got {teacher.name!r}")
    for i, student in enumerate(students):
        s = model_shape(student)
        if student.name != "bert" or not s:
            raise ValueError(f"kd.student_init: teacher_layers needs BERT students, but students.{i} is {student.name!r}")
        for key in ("hidden_size", "num_heads", "intermediate_size"):
            if s[key] != t[key]:
                raise ValueError(f"kd.student_init: teacher_layers copies teacher layers, so students.{i} needs the "
                                 f"teacher's {key} {t[key]} (got {s[key]}); use student_init: random for it")
        if s["num_layers"] > t["num_layers"]:
            raise ValueError(f"kd.student_init: students.{i} has {s['num_layers']} layers, more than the teacher's "
                             f"{t['num_layers']} to copy from")
