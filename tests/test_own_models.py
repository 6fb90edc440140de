"""Users' own models: Hugging Face models from a directory or a config (own tokenizers), timm and
torchvision classifiers with weights from a local file, and feature losses between modules named by
path (forward hooks). Unit tests run on random weights; the slow tests distil on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raykd import models as M
from raykd.config import parse_config
from raykd.engine.task import TaskSpec, TeacherRef, build_task
from raykd.errors import UserError

TINY_BERT = {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128}
TINY_DISTILBERT = {"config": "distilbert", "n_layers": 2, "dim": 32, "hidden_dim": 64, "n_heads": 2}
DATA = {"name": "movie_reviews", "max_length": 24, "train_subset": 200, "test_subset": 100}


def _bpe(texts, out):
    """A small BPE tokenizer trained with the tokenizers library on ``texts``, saved to ``out``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(list(texts), trainers.BpeTrainer(vocab_size=1500, special_tokens=["<pad>", "<unk>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(out)
    return str(out)


def _saved_teacher(out, id2label=("negative", "positive")):
    from raykd.models.bert import tokenizer

    torch.manual_seed(0)
    t = M.build("bert", num_classes=2, **TINY_BERT)
    t.config.id2label = dict(enumerate(id2label))
    t.config.label2id = {n: i for i, n in enumerate(id2label)}
    t.save_pretrained(out)
    tokenizer().save_pretrained(out)
    return t, str(out)


def _train_texts():
    from raykd.data.prepare import prepare

    return prepare(DATA).train["text"]


# ---- Hugging Face models ------------------------------------------------------------------------

def test_hf_teacher_from_a_directory_is_used_as_trained_and_its_label_order_follows_the_data(tmp_path):
    t, path = _saved_teacher(tmp_path / "t", id2label=("positive", "negative"))  # saved in the other order
    task = build_task(TaskSpec(dataset=DATA, student={"name": "hf", "args": {"path": path}}))
    loaded = task.build_student().eval()
    assert loaded.raykd_trained_head and loaded.config.id2label == {0: "negative", 1: "positive"}
    b = task.batch(task.load_split("test"), np.arange(4))
    with torch.no_grad():
        ours = loaded(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        theirs = t.eval()(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    torch.testing.assert_close(ours, theirs[:, [1, 0]])  # the same model, columns in the data's order


def test_hf_refuses_a_head_trained_for_other_classes_and_unknown_config_keys(tmp_path):
    _, path = _saved_teacher(tmp_path / "t", id2label=("spam", "ham"))
    with pytest.raises(UserError, match=r"trained for the classes \['spam', 'ham'\]"):
        build_task(TaskSpec(dataset=DATA, student={"name": "hf", "args": {"path": path}})).build_student()
    with pytest.raises(UserError, match="did you mean 'n_layers'"):
        parse_config({"method": "kd", "data": DATA, "teacher": {"name": "hf", "args": {"path": path}},
                      "students": [{"name": "hf", "args": {"config": "distilbert", "n_layer": 2}}]})
    with pytest.raises(UserError, match="no directory"):
        parse_config({"method": "kd", "data": DATA, "teacher": {"name": "hf", "args": {"path": "./no/such/model"}},
                      "students": [{"name": "hf", "args": TINY_DISTILBERT}]})


@pytest.mark.parametrize("family", ["roberta", "electra", "distilbert"])
def test_fresh_students_of_other_families_read_their_own_tokenizer(tmp_path, family):
    _, path = _saved_teacher(tmp_path / "t")
    bpe = _bpe(_train_texts(), tmp_path / "bpe")
    shape = {"distilbert": {"n_layers": 1, "dim": 32, "hidden_dim": 64, "n_heads": 2}}.get(
        family, {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64})
    spec = TaskSpec(dataset=DATA, student={"name": "hf", "args": {"config": family, "tokenizer": bpe, **shape}},
                    teacher=TeacherRef(name="hf", args={"path": path}), losses=[{"name": "kd"}, {"name": "ce"}])
    task = build_task(spec)
    assert not task.shared_tokenizer
    train = task.load_split("train")
    assert train["input_ids"].max() < 1500 <= train["t_input_ids"].max()  # each model its own vocabulary
    student, teacher = task.build_student(), task.build_teacher()
    assert student.config.model_type == family and student.config.vocab_size == 1500
    loss_fn = task.build_loss(student, teacher)
    b = task.batch(train, np.arange(8))
    loss, logs = task.loss(student, loss_fn, b, task.teacher_forward(teacher, b, loss_fn.teacher_needs))
    loss.backward()
    assert torch.isfinite(loss) and logs["kd"] > 0


def test_token_level_losses_across_tokenizers_are_refused_by_name_and_logit_losses_pass(tmp_path):
    _, path = _saved_teacher(tmp_path / "t")
    bpe = _bpe(_train_texts(), tmp_path / "bpe")
    cfg = {"method": "kd", "data": DATA, "teacher": {"name": "hf", "args": {"path": path}},
           "students": [{"name": "hf", "args": TINY_DISTILBERT | {"tokenizer": bpe}}],
           "kd": {"allow_larger_student": True}}
    assert parse_config(cfg | {"losses": [{"name": "kd"}, {"name": "ce"}]})
    for loss in ({"name": "hidden_mse"}, {"name": "wr_pair"}, {"name": "attention_kl"},
                 {"name": "hidden_mse", "teacher_module": "encoder.layer.1", "student_module": "transformer.layer.1"}):
        with pytest.raises(UserError, match=rf"losses\.1: loss '{loss['name']}' compares the models token by token"):
            parse_config(cfg | {"losses": [{"name": "kd"}, loss]})
    # the same tokenizer (the student reads MiniLM's WordPiece, as the teacher directory does): accepted
    same = cfg | {"students": [{"name": "hf", "args": TINY_DISTILBERT}],
                  "losses": [{"name": "hidden_mse", "teacher_module": "encoder.layer.1", "student_module": "transformer.layer.1"}]}
    assert parse_config(same).losses[0].params["student_module"] == "transformer.layer.1"


# ---- features by module path --------------------------------------------------------------------

def test_unknown_module_paths_are_refused_with_the_closest_path(tmp_path):
    _, path = _saved_teacher(tmp_path / "t")
    cfg = {"method": "kd", "data": DATA, "teacher": {"name": "hf", "args": {"path": path}},
           "students": [{"name": "hf", "args": TINY_DISTILBERT}], "kd": {"allow_larger_student": True}}
    with pytest.raises(UserError, match=r"losses\.0\.student_module: .*no module 'transformer\.layers\.1'; did you mean 'transformer\.layer\.1'"):
        parse_config(cfg | {"losses": [{"name": "hidden_mse", "teacher_module": "encoder.layer.1", "student_module": "transformer.layers.1"}]})
    with pytest.raises(UserError, match=r"teacher_module: .*no module 'encoder\.layer\.7'"):
        parse_config(cfg | {"losses": [{"name": "hidden_mse", "teacher_module": "encoder.layer.7", "student_module": "transformer.layer.1"}]})
    with pytest.raises(UserError, match="give teacher_module and student_module together"):
        parse_config(cfg | {"losses": [{"name": "hidden_mse", "teacher_module": "encoder.layer.1"}]})
    with pytest.raises(UserError, match="pair them one to one"):
        parse_config(cfg | {"losses": [{"name": "wr_pair", "teacher_module": ["encoder.layer.0", "encoder.layer.1"],
                                        "student_module": "transformer.layer.1"}]})


def test_feature_losses_between_modules_of_cnns_project_widths_and_learn(tmp_path):
    """hidden_mse between timm ResNet stages of different widths and sizes (1x1 conv, pooled), and the
    relation losses on the same maps read as positions: finite, and a few steps reduce hidden_mse."""
    mnist = {"name": "mnist", "train_subset": 256, "test_subset": 100}
    losses = [{"name": "hidden_mse", "teacher_module": "layer3", "student_module": "layer2"},
              {"name": "wr_pair", "teacher_module": "layer2", "student_module": "layer2"},
              {"name": "ltr_pair", "teacher_module": ["layer4", "layer4"], "student_module": ["layer4", "layer4"]}]
    spec = TaskSpec(dataset=mnist, student={"name": "timm", "args": {"arch": "test_resnet"}},
                    teacher=TeacherRef(name="timm", args={"arch": "resnet10t"}), losses=losses)
    task = build_task(spec)
    torch.manual_seed(0)
    student, teacher = task.build_student(), task.build_teacher()
    assert student.conv1.in_channels == 1 if hasattr(student.conv1, "in_channels") else True
    loss_fn = task.build_loss(student, teacher)
    assert isinstance(loss_fn.parts[0].projs[0], torch.nn.Conv2d)
    assert loss_fn.teacher_needs == {"features"}
    opt = torch.optim.Adam(list(student.parameters()) + list(loss_fn.parameters()), lr=3e-3)
    b = task.batch(task.load_split("train"), np.arange(64))
    t_out = task.teacher_forward(teacher, b, loss_fn.teacher_needs)
    first = None
    for _ in range(15):
        loss, logs = task.loss(student, loss_fn, b, t_out)
        first = first if first is not None else logs["hidden_mse"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(np.isfinite(v) for v in logs.values())
    assert logs["hidden_mse"] < 0.7 * first, (first, logs)


# ---- timm and torchvision -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_timm_weights_from_a_local_file(tmp_path, fmt):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = M.build("timm", num_classes=10, arch="test_resnet", input_shape=[1, 28, 28]).eval()
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    back = M.build("timm", num_classes=10, arch="test_resnet", input_shape=[1, 28, 28], weights=str(path)).eval()
    assert back.raykd_trained_head
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(back(x), src(x))
    other = M.build("timm", num_classes=3, arch="test_resnet", input_shape=[1, 28, 28], weights=str(path))
    assert not other.raykd_trained_head  # weights for 10 classes: the 3-class head starts fresh
    with pytest.raises(UserError, match=r"matches \d+ of the model.s 122 tensors; are they weights of this arch"):
        M.build("timm", num_classes=10, arch="resnet18", input_shape=[1, 28, 28], weights=str(path))


def test_timm_and_torchvision_names_are_checked_at_config_time():
    base = {"method": "kd", "data": {"name": "mnist"}, "teacher": {"name": "timm", "args": {"arch": "resnet18"}}}
    with pytest.raises(UserError, match="timm has no model 'resnet19'"):
        parse_config(base | {"students": [{"name": "timm", "args": {"arch": "resnet19"}}]})
    cfg = parse_config(base | {"students": [{"name": "torchvision", "args": {"arch": "mobilenet_v3_small"}}]})
    task = build_task(TaskSpec(dataset={"name": "mnist", "train_subset": 64, "test_subset": 32}, student=cfg.students[0]))
    model = task.build_student()
    assert model(task.batch(task.load_split("train"), np.arange(2))["x"]).shape == (2, 10)
    with pytest.raises(UserError, match="input_shape: set from the dataset"):
        parse_config(base | {"students": [{"name": "timm", "args": {"arch": "resnet18", "input_shape": [1, 28, 28]}}]})


# ---- end to end on real data --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.ray
def test_hf_teacher_directory_distilled_into_a_distilbert_with_its_own_bpe_tokenizer(ray_session, tmp_path):
    """A BERT teacher trained by raykd and saved with save_pretrained is loaded from its directory and
    used as it is; a 2-layer DistilBERT reading a BPE tokenizer trained on the training text is
    distilled from it with logit KD (two tokenizations of the same sentences). Stated floor: both the
    distilled student and its from-scratch twin above 0.56 on 600 test sentences (chance 0.5), the
    distilled one at least as good; the saved student reloads with its tokenizer and label names."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from raykd.api import run

    data = {"name": "movie_reviews", "max_length": 24, "train_subset": 3000, "test_subset": 600}
    first = run(parse_config({
        "name": "own_teacher", "method": "kd", "output_dir": str(tmp_path / "a"), "data": data,
        "teacher": {"name": "bert", "args": TINY_BERT, "train": {"epochs": 4, "batch_size": 64, "lr": 2e-3}},
        "students": [{"name": "bert", "args": TINY_BERT | {"num_layers": 1}}], "train": {"epochs": 1},
        "engine": {"num_workers": 2}}), check_data=False)
    t_acc = float(first.table.query("method == 'teacher'")["accuracy"].iloc[0])
    teacher_dir = tmp_path / "a" / "students" / "teacher"
    from raykd.data.prepare import prepare

    bpe = _bpe(prepare(data).train["text"], tmp_path / "bpe")
    cfg = parse_config({
        "name": "own_hf", "method": "kd", "output_dir": str(tmp_path / "b"), "data": data,
        "teacher": {"name": "hf", "args": {"path": str(teacher_dir)}},
        "students": [{"name": "hf", "args": {"config": "distilbert", "n_layers": 2, "dim": 64, "hidden_dim": 256,
                                             "n_heads": 2, "tokenizer": bpe}}],
        "losses": [{"name": "kd", "weight": 1.0, "temperature": 2.0}, {"name": "ce", "weight": 0.5}],
        "kd": {"baseline_scratch": True, "allow_larger_student": True},
        "train": {"epochs": 3, "batch_size": 64, "lr": 1e-3}, "engine": {"num_workers": 2}})
    df = run(cfg, check_data=False).table
    acc = {m: float(df[df["method"] == m]["accuracy"].iloc[0]) for m in ("teacher", "kd", "scratch")}
    assert acc["teacher"] == pytest.approx(t_acc, abs=1e-9)  # the directory's model, not retrained
    assert acc["kd"] > 0.56 and acc["scratch"] > 0.56 and acc["kd"] >= acc["scratch"] - 0.01, acc
    saved = tmp_path / "b" / "students" / "kd-0"
    back = AutoModelForSequenceClassification.from_pretrained(saved)
    tok = AutoTokenizer.from_pretrained(saved)
    assert back.config.model_type == "distilbert" and back.config.id2label == {0: "negative", 1: "positive"}
    assert len(tok) == 1500
    test = prepare(data).test
    enc = tok(list(test["text"]), padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        pred = back.eval()(**enc).logits.argmax(1).numpy()
    assert float((pred == test["label"]).mean()) == pytest.approx(acc["kd"], abs=0.01)


@pytest.mark.slow
@pytest.mark.ray
def test_timm_teacher_and_student_on_mnist_with_a_hidden_feature_loss(ray_session, tmp_path):
    """A timm ResNet-18 teacher trained on MNIST; timm's test_resnet distilled with KD + CE + hidden_mse
    between layer3 of each (module paths) beats the same student trained from scratch on the same
    budget. A second run reads the saved teacher's weights file and uses it without training."""
    from raykd.api import run

    base = {"method": "kd", "data": {"name": "mnist", "train_subset": 6000, "test_subset": 2000},
            "teacher": {"name": "timm", "args": {"arch": "resnet18"}, "train": {"epochs": 2, "lr": 2e-3}},
            "students": [{"name": "timm", "args": {"arch": "test_resnet"}}],
            "losses": [{"name": "kd", "weight": 1.0, "temperature": 4.0}, {"name": "ce", "weight": 0.5},
                       {"name": "hidden_mse", "weight": 1.0, "teacher_module": "layer3", "student_module": "layer3"}],
            "train": {"epochs": 2, "lr": 2e-3}, "engine": {"num_workers": 2}}
    df = run(parse_config(base | {"name": "timm_a", "output_dir": str(tmp_path / "a"), "kd": {"baseline_scratch": True}}),
             check_data=False).table
    acc = {m: float(df[df["method"] == m]["accuracy"].iloc[0]) for m in ("teacher", "kd", "scratch")}
    assert acc["teacher"] > 0.9 and acc["kd"] > 0.8 and acc["kd"] > acc["scratch"], acc
    weights = tmp_path / "a" / "students" / "teacher" / "model.safetensors"
    again = base | {"name": "timm_b", "output_dir": str(tmp_path / "b"), "losses": base["losses"][:2],
                    "teacher": {"name": "timm", "args": {"arch": "resnet18", "weights": str(weights)}}}
    df2 = run(parse_config(again), check_data=False).table
    # the same weights, not retrained: the accuracy the workers reported for the saved model is the
    # saved model's (every rank evaluates rank 0's BatchNorm statistics, which the checkpoint holds)
    assert float(df2.query("method == 'teacher'")["accuracy"].iloc[0]) == pytest.approx(acc["teacher"], abs=1e-9)
