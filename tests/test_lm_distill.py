"""Language-model distillation (``method: kd`` on text): teacher-layer initialisation, config checks,
and a small end-to-end run whose students reload with AutoModelForSequenceClassification."""

from __future__ import annotations

import pytest
import torch

from raykd import models as M
from raykd.config import parse_config
from raykd.models import bert
from raykd.errors import UserError

TINY_TEACHER = {"num_layers": 4, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128}


def _ids():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (4, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    return ids, mask


def test_teacher_layer_choice_is_uniform_skipping():
    assert bert.teacher_layer_choice(6, 3) == [1, 3, 5]
    assert bert.teacher_layer_choice(6, 2) == [2, 5]
    assert bert.teacher_layer_choice(4, 4) == [0, 1, 2, 3]


def test_copy_teacher_layers_copies_embeddings_and_chosen_layers():
    torch.manual_seed(0)
    teacher = M.build("bert", **TINY_TEACHER).eval()
    student = M.build("bert", **(TINY_TEACHER | {"num_layers": 2})).eval()
    chosen = bert.copy_teacher_layers(student, teacher)
    assert chosen == [1, 3]
    for j, t_i in enumerate(chosen):
        for (n, p), (_, q) in zip(student.bert.encoder.layer[j].named_parameters(), teacher.bert.encoder.layer[t_i].named_parameters()):
            assert torch.equal(p, q), n
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    # a student as deep as the teacher becomes the teacher
    twin = M.build("bert", **TINY_TEACHER).eval()
    bert.copy_teacher_layers(twin, teacher)
    ids, mask = _ids()
    torch.testing.assert_close(twin(input_ids=ids, attention_mask=mask).logits, teacher(input_ids=ids, attention_mask=mask).logits)


def test_copy_teacher_layers_refuses_other_widths():
    teacher = M.build("bert", **TINY_TEACHER)
    with pytest.raises(UserError, match="student_init"):
        bert.copy_teacher_layers(M.build("bert", num_layers=2, hidden_size=32, num_heads=2, intermediate_size=128), teacher)


def _cfg(student_init: str | None = None, **over) -> dict:
    base = {"method": "kd", "data": {"name": "movie_reviews", "max_length": 32},
            "teacher": {"name": "minilm-l6"},
            "students": [{"name": "bert", "args": {"num_layers": 3, "hidden_size": 384, "num_heads": 12, "intermediate_size": 1536}}],
            "losses": [{"name": "kd", "temperature": 4.0}, {"name": "wr_pair", "weight": 1.0}, {"name": "ltr_pair"}]}
    return base | over | ({"kd": {"student_init": student_init}} if student_init else {})


def test_config_accepts_teacher_layers_for_matching_students_and_names_the_field_otherwise():
    cfg = parse_config(_cfg(student_init="teacher_layers"))
    assert cfg.kd.student_init == "teacher_layers"
    assert parse_config(_cfg()).kd.student_init == "random"
    narrow = _cfg(student_init="teacher_layers", students=[{"name": "bert", "args": {"num_layers": 4, "hidden_size": 256}}])
    with pytest.raises(UserError, match=r"student_init.*hidden_size"):
        parse_config(narrow)
    with pytest.raises(UserError, match="student_init"):
        parse_config(_cfg(student_init="teacher"))
    # a narrower student is fine with random initialisation
    assert parse_config(_cfg(students=[{"name": "bert", "args": {"num_layers": 4, "hidden_size": 256}}])).students[0].args["hidden_size"] == 256


@pytest.mark.slow
@pytest.mark.ray
def test_lm_distillation_end_to_end(ray_session, tmp_path):
    """A 2-layer BERT teacher trained on movie_reviews; a 1-layer student initialised from its top
    layer and distilled with KD + WR + LTR beats chance by a margin and the same student trained from
    scratch on the same budget; every saved student reloads with AutoModelForSequenceClassification
    to the accuracy recorded in the results table."""
    from transformers import AutoModelForSequenceClassification

    from raykd.engine.task import ClassifyTask, TaskSpec
    from raykd.api import run

    tiny = {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128}
    cfg = parse_config({
        "name": "lm_test", "method": "kd", "output_dir": str(tmp_path),
        "data": {"name": "movie_reviews", "max_length": 24, "train_subset": 3000, "test_subset": 600},
        "teacher": {"name": "bert", "args": tiny, "train": {"epochs": 4, "batch_size": 64, "lr": 2e-3}},
        "students": [{"name": "bert", "args": tiny | {"num_layers": 1}, "label": "bert-1x64"}],
        "losses": [{"name": "kd", "weight": 1.0, "temperature": 2.0}, {"name": "wr_pair", "weight": 1.0},
                   {"name": "ltr_pair", "weight": 1.0}],
        "kd": {"student_init": "teacher_layers", "baseline_scratch": True},
        "train": {"epochs": 1, "batch_size": 64, "lr": 1e-3}, "engine": {"num_workers": 2}})
    df = run(cfg, check_data=False).table
    acc = {m: float(df[df["method"] == m]["accuracy"].iloc[0]) for m in ("teacher", "kd", "scratch")}
    assert acc["teacher"] > 0.62, acc
    assert acc["kd"] > 0.58 and acc["kd"] > acc["scratch"] + 0.03, acc
    method = ClassifyTask(TaskSpec(dataset=cfg.data.model_dump(), student={"name": "bert", "args": {}}))
    test = method.load_split("test")
    for kind in ("kd", "scratch"):
        back = AutoModelForSequenceClassification.from_pretrained(tmp_path / "students" / f"{kind}-0")
        ev = method.evaluate(back, test)
        assert ev["correct"] / ev["count"] == pytest.approx(acc[kind], abs=1e-9), kind
