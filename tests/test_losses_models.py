"""Built-in losses (shapes, zero when the student equals the teacher, gradients) and the model registry."""

from __future__ import annotations

import pytest
import torch

from raykd import models
from raykd.errors import UserError
from raykd.losses import LOSSES, WeightedLoss
from raykd.losses.kd import uniform_layer_map
from raykd.models.size import count_params, macs_per_example, model_bytes, param_count_on_meta


def _text_outputs(B=3, L=7, D=16, layers=3, heads=2, seed=0, K=4):
    g = torch.Generator().manual_seed(seed)
    hs = tuple(torch.randn(B, L, D, generator=g) for _ in range(layers + 1))
    att = tuple(torch.softmax(torch.randn(B, heads, L, L, generator=g), -1) for _ in range(layers))
    return {"logits": torch.randn(B, K, generator=g), "hidden_states": hs, "attentions": att}


def _batch(B=3, L=7, K=4):
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 4:] = 0
    return {"label": torch.arange(B) % K, "attention_mask": mask}


@pytest.mark.parametrize("name", ["kd", "hidden_mse", "attention_kl"])
def test_zero_when_student_equals_teacher(name):
    out = _text_outputs()
    loss = WeightedLoss([{"name": name}], {"student_hidden": 16, "teacher_hidden": 16})
    total, logs = loss(out, out, _batch())
    assert total.shape == ()
    assert float(total) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["kd", "hidden_mse", "attention_kl", "ce"])
def test_positive_and_gradient_flows(name):
    t = _text_outputs(seed=1)
    s = _text_outputs(seed=2)
    s = {"logits": s["logits"].requires_grad_(),
         "hidden_states": tuple(h.requires_grad_() for h in s["hidden_states"]),
         "attentions": tuple(a.requires_grad_() for a in s["attentions"])}
    loss = WeightedLoss([{"name": name, "weight": 2.0}], {"student_hidden": 16, "teacher_hidden": 16})
    total, _ = loss(s, t, _batch())
    assert float(total) > 0
    total.backward()
    grads = [s["logits"].grad] if name in ("kd", "ce") else (
        [h.grad for h in s["hidden_states"]] if name == "hidden_mse" else [a.grad for a in s["attentions"]])
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


def test_kd_matches_formula():
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    T = 2.0
    p_t = torch.softmax(t / T, -1)
    expected = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    got, _ = WeightedLoss([{"name": "kd", "temperature": T}])({"logits": s}, {"logits": t}, {})
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_hidden_mse_projects_different_widths_and_ignores_padding():
    t = _text_outputs(D=16, layers=6)
    s = _text_outputs(D=8, layers=3, seed=3)
    loss = WeightedLoss([{"name": "hidden_mse"}], {"student_hidden": 8, "teacher_hidden": 16})
    assert sum(p.numel() for p in loss.parameters()) == 8 * 16  # the learned projection
    batch = _batch()
    v1, _ = loss(s, t, batch)
    # changing the padded positions of the student changes nothing
    s2 = dict(s)
    s2["hidden_states"] = tuple(h.clone() for h in s["hidden_states"])
    for h in s2["hidden_states"]:
        h[0, 4:] = 100.0
    v2, _ = loss(s2, t, batch)
    assert float(v1) == pytest.approx(float(v2), rel=1e-6)


def test_uniform_layer_map_matches_paper_example():
    assert uniform_layer_map(6, 3) == [(0, 0), (2, 1), (4, 2), (6, 3)]


def test_weighted_sum_and_unknown_names():
    out = {"logits": torch.randn(4, 3)}
    batch = {"label": torch.tensor([0, 1, 2, 0])}
    total, logs = WeightedLoss([{"name": "ce", "weight": 0.5}, {"name": "ce", "weight": 0.25}])(out, None, batch)
    assert float(total) == pytest.approx(0.75 * logs["ce"], rel=1e-6)
    assert set(logs) == {"ce", "ce_2"}
    with pytest.raises(UserError, match="did you mean 'kd'"):
        WeightedLoss([{"name": "kdd"}])
    with pytest.raises(UserError, match="losses.0.temp: unknown parameter of loss 'kd'; did you mean 'temperature'"):
        WeightedLoss([{"name": "kd", "temp": 3}])


def test_user_registered_loss_is_composable():
    @LOSSES.register("test_l1_logits")
    def l1(student_out, teacher_out, batch, scale: float = 1.0):
        return scale * (student_out["logits"] - teacher_out["logits"]).abs().mean()

    s, t = {"logits": torch.ones(2, 2)}, {"logits": torch.zeros(2, 2)}
    total, _ = WeightedLoss([{"name": "test_l1_logits", "scale": 3.0}])(s, t, {})
    assert float(total) == pytest.approx(3.0)


@pytest.mark.parametrize("name, kwargs", [("lenet5", {}), ("cnn", {"widths": [4, 8], "hidden": 16}),
                                          ("cnn", {"widths": [8], "hidden": 0, "pool": "avg"}), ("mlp", {})])
def test_image_models_shapes_and_sizes(name, kwargs):
    m = models.build(name, num_classes=10, **kwargs)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    n = count_params(m)
    assert param_count_on_meta(name, kwargs, 10) == n
    assert model_bytes(m, 2) < model_bytes(m, 4)
    assert macs_per_example(m, torch.randn(4, 1, 28, 28)) > 0


def test_lenet5_is_the_classic_size():
    assert count_params(models.build("lenet5")) == 61706


def test_macs_counts_a_linear_layer_exactly():
    lin = torch.nn.Linear(100, 10)
    assert macs_per_example(lin, torch.randn(8, 100)) == 1000


def test_bert_student_any_size_returns_hidden_states_and_attentions():
    m = models.build("bert", num_layers=2, hidden_size=64, num_heads=4, num_classes=3, vocab_size=100)
    ids = torch.randint(0, 100, (2, 5))
    out = m(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True, output_attentions=True)
    assert out.logits.shape == (2, 3)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 5, 64)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 5, 5)


def test_bad_model_args_are_user_errors():
    with pytest.raises(UserError, match="bad arguments for model 'cnn'"):
        models.build("cnn", widths=[])
    with pytest.raises(UserError, match="did you mean 'lenet5'"):
        models.build("lenet")
