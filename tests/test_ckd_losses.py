"""Checks of the CKD relation losses (WR / LTR, pair- and triple-wise) against slow loop references."""

from __future__ import annotations

import math

import pytest
import torch

from raykd.errors import UserError
from raykd.losses import WeightedLoss, build_one
from raykd.losses.kd import uniform_layer_map

# --------------------------------------------------------------------------------------------------
# Slow, obviously-correct references: explicit Python loops over sets, pairs and triples, float64
# --------------------------------------------------------------------------------------------------


def ref_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def ref_huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


def ref_pair_cosine_kl(vs: list[torch.Tensor], vt: list[torch.Tensor], temperature: float) -> tuple[float, int]:
    """Sum over anchors i of KL(p_t(.|i) || p_s(.|i)), p(j|i) = softmax over j != i of cos(v_i, v_j)/T."""
    total, count = 0.0, 0
    n = len(vs)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        if not others:
            continue
        zs = [ref_cos(vs[i], vs[j]) / temperature for j in others]
        zt = [ref_cos(vt[i], vt[j]) / temperature for j in others]
        log_zs = math.log(sum(math.exp(z) for z in zs))
        log_zt = math.log(sum(math.exp(z) for z in zt))
        for a, b in zip(zs, zt):
            log_ps, log_pt = a - log_zs, b - log_zt
            total += math.exp(log_pt) * (log_pt - log_ps)
        count += 1
    return total, count


def ref_pair_distance(vs: list[torch.Tensor], vt: list[torch.Tensor]) -> tuple[float, int]:
    """Sum over pairs i != j of Huber(d_s/mean d_s, d_t/mean d_t)."""
    n = len(vs)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    if not pairs:
        return 0.0, 0
    ds = {p: float((vs[p[0]] - vs[p[1]]).norm()) for p in pairs}
    dt = {p: float((vt[p[0]] - vt[p[1]]).norm()) for p in pairs}
    ms, mt = sum(ds.values()) / len(pairs), sum(dt.values()) / len(pairs)
    return sum(ref_huber(ds[p] / ms - dt[p] / mt) for p in pairs), len(pairs)


def ref_angle(v: list[torch.Tensor], i: int, j: int, k: int) -> float:
    a, b = v[j] - v[i], v[k] - v[i]
    return float((a / a.norm()) @ (b / b.norm()))


def ref_triple(vs, vt, pos: list[int], window: int | None, criterion: str) -> tuple[float, int]:
    """Sum over distinct i, j, k (j, k within +-(w-1)//2 positions of i) of crit(psi_s, psi_t)."""
    n = len(vs)
    h = None if window is None else (window - 1) // 2
    total, count = 0.0, 0
    for i in range(n):
        for j in range(n):
            for k in range(n):
                if len({i, j, k}) < 3:
                    continue
                if h is not None and (abs(pos[j] - pos[i]) > h or abs(pos[k] - pos[i]) > h):
                    continue
                e = ref_angle(vs, i, j, k) - ref_angle(vt, i, j, k)
                total += e * e if criterion == "mse" else ref_huber(e)
                count += 1
    return total, count


def ref_set_relation(kind: str, vs, vt, pos, params) -> tuple[float, int]:
    if kind == "pair_cosine_kl":
        return ref_pair_cosine_kl(vs, vt, params.get("temperature", 1.0))
    if kind == "pair_distance":
        return ref_pair_distance(vs, vt)
    return ref_triple(vs, vt, pos, params.get("window"), params.get("criterion", "mse"))


def ref_wr(kind, hs, ht, mask, layer_map, params) -> float:
    """WR: per matched layer pair and sentence, the set is the sentence's valid tokens."""
    total, count = 0.0, 0
    for t_i, s_i in layer_map:
        for b in range(mask.shape[0]):
            pos = [p for p in range(mask.shape[1]) if mask[b, p] > 0]
            vs = [hs[s_i][b, p].double() for p in pos]
            vt = [ht[t_i][b, p].double() for p in pos]
            s, c = ref_set_relation(kind, vs, vt, pos, params)
            total, count = total + s, count + c
    return total / max(count, 1)


def ref_ltr(kind, hs, ht, mask, layer_map, params) -> float:
    """LTR: per valid token, the set is its representations at the matched layers."""
    total, count = 0.0, 0
    for b in range(mask.shape[0]):
        for p in range(mask.shape[1]):
            if mask[b, p] == 0:
                continue
            vs = [hs[s_i][b, p].double() for _, s_i in layer_map]
            vt = [ht[t_i][b, p].double() for t_i, _ in layer_map]
            s, c = ref_set_relation(kind, vs, vt, list(range(len(layer_map))), params)
            total, count = total + s, count + c
    return total / max(count, 1)


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------

# (registered name, params, reference kind, WR or LTR)
CASES = [
    ("wr_pair", {"form": "cosine_kl"}, "pair_cosine_kl", "wr"),
    ("wr_pair", {"form": "cosine_kl", "temperature": 0.5}, "pair_cosine_kl", "wr"),
    ("wr_pair", {"form": "distance"}, "pair_distance", "wr"),
    ("wr_triple", {"window": None}, "triple", "wr"),
    ("wr_triple", {"window": None, "criterion": "huber"}, "triple", "wr"),
    ("wr_triple", {"window": 3}, "triple", "wr"),
    ("wr_triple", {"window": 5, "anchor_chunk": 2}, "triple", "wr"),
    ("wr_triple", {"window": None, "anchor_chunk": 3}, "triple", "wr"),
    ("ltr_pair", {"form": "cosine_kl"}, "pair_cosine_kl", "ltr"),
    ("ltr_pair", {"form": "distance"}, "pair_distance", "ltr"),
    ("ltr_triple", {}, "triple", "ltr"),
    ("ltr_triple", {"criterion": "huber"}, "triple", "ltr"),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items())}" for n, p, _, _ in CASES]


def make_batch(seed=0, B=3, L=8, ds=16, dt=32, n_s=3, n_t=6):
    """Random hidden states (embedding + layers) for student and teacher, with right padding."""
    g = torch.Generator().manual_seed(seed)
    hs = tuple(torch.randn(B, L, ds, generator=g) for _ in range(n_s + 1))
    ht = tuple(torch.randn(B, L, dt, generator=g) for _ in range(n_t + 1))
    mask = torch.ones(B, L)
    mask[1, 5:] = 0  # a padded sentence
    mask[2, 2:] = 0  # a sentence of two tokens (no triples, one pair each way)
    return hs, ht, mask


def loss_value(name, params, hs, ht, mask):
    loss = build_one(name, dict(params))
    return loss({"hidden_states": hs}, {"hidden_states": ht}, {"attention_mask": mask})


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,params,kind,level", CASES, ids=IDS)
def test_matches_loop_reference(name, params, kind, level):
    hs, ht, mask = make_batch()
    got = loss_value(name, params, hs, ht, mask)
    layer_map = uniform_layer_map(len(ht) - 1, len(hs) - 1)
    ref = (ref_wr if level == "wr" else ref_ltr)(kind, hs, ht, mask, layer_map, params)
    assert ref > 0
    assert float(got) == pytest.approx(ref, abs=1e-5, rel=1e-5)


def test_explicit_layer_map_matches_reference():
    hs, ht, mask = make_batch(seed=3)
    layer_map = [[6, 3], [1, 0], [3, 2]]
    for name, params, kind, level in [("wr_pair", {"form": "distance"}, "pair_distance", "wr"), ("ltr_triple", {}, "triple", "ltr")]:
        got = loss_value(name, {**params, "layer_map": layer_map}, hs, ht, mask)
        ref = (ref_wr if level == "wr" else ref_ltr)(kind, hs, ht, mask, [tuple(p) for p in layer_map], params)
        assert float(got) == pytest.approx(ref, abs=1e-5, rel=1e-5)


def test_window_covering_sentence_equals_all_triples():
    hs, ht, mask = make_batch(seed=1, L=7)
    full = loss_value("wr_triple", {"window": None}, hs, ht, mask)
    wide = loss_value("wr_triple", {"window": 13}, hs, ht, mask)  # +-6 covers every position of L=7
    narrow = loss_value("wr_triple", {"window": 3}, hs, ht, mask)
    assert float(wide) == pytest.approx(float(full), abs=1e-6)
    assert abs(float(narrow) - float(full)) > 1e-4


def test_chunked_triples_same_value_and_gradient():
    hs, ht, mask = make_batch(seed=2, L=9)
    grads = []
    for chunk in (None, 2):
        hs_leaf = tuple(h.clone().requires_grad_(True) for h in hs)
        v = loss_value("wr_triple", {"window": None, "anchor_chunk": chunk}, hs_leaf, ht, mask)
        v.backward()
        grads.append((float(v.detach()), torch.cat([h.grad.flatten() for h in hs_leaf])))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name,params,kind,level", CASES, ids=IDS)
def test_invariant_to_rotating_student(name, params, kind, level):
    hs, ht, mask = make_batch(seed=4)
    q = random_orthogonal(hs[0].shape[-1], seed=5)
    rotated = tuple(h @ q for h in hs)
    assert float(loss_value(name, params, rotated, ht, mask)) == pytest.approx(float(loss_value(name, params, hs, ht, mask)), abs=1e-5, rel=1e-5)


@pytest.mark.parametrize("name", ["wr_pair", "ltr_pair"])
def test_distance_form_invariant_to_scaling_student(name):
    hs, ht, mask = make_batch(seed=6)
    base = float(loss_value(name, {"form": "distance"}, hs, ht, mask))
    for scale in (0.01, 3.7, 250.0):
        scaled = tuple(h * scale for h in hs)
        assert float(loss_value(name, {"form": "distance"}, scaled, ht, mask)) == pytest.approx(base, abs=1e-5, rel=1e-5)


@pytest.mark.parametrize("name,params,kind,level", CASES, ids=IDS)
def test_padding_content_has_no_influence(name, params, kind, level):
    hs, ht, mask = make_batch(seed=7)
    pad = (mask == 0).unsqueeze(-1)
    g = torch.Generator().manual_seed(8)
    noisy_s = tuple(torch.where(pad, 100 * torch.randn(h.shape, generator=g), h) for h in hs)
    noisy_t = tuple(torch.where(pad, 100 * torch.randn(h.shape, generator=g), h) for h in ht)
    values, grads = [], []
    for a, b in ((hs, ht), (noisy_s, noisy_t)):
        leaf = tuple(h.clone().requires_grad_(True) for h in a)
        v = loss_value(name, params, leaf, b, mask)
        v.backward()
        values.append(float(v.detach()))
        grads.append(torch.stack([h.grad for h in leaf]))
    assert values[1] == pytest.approx(values[0], abs=1e-6, rel=1e-6)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)
    assert float(grads[0][:, pad.squeeze(-1)].abs().max()) == 0.0  # no gradient reaches padding


@pytest.mark.parametrize("name,params,kind,level", CASES, ids=IDS)
def test_zero_when_student_equals_teacher_positive_otherwise(name, params, kind, level):
    _, ht, mask = make_batch(seed=9, dt=16)
    layer_map = uniform_layer_map(len(ht) - 1, len(ht) - 1)
    same = loss_value(name, {**params, "layer_map": layer_map}, ht, ht, mask)
    assert abs(float(same)) < 1e-6
    hs, _, _ = make_batch(seed=10, ds=16, n_s=6)
    assert float(loss_value(name, {**params, "layer_map": layer_map}, hs, ht, mask)) > 1e-3


@pytest.mark.parametrize("name,params,kind,level", CASES, ids=IDS)
def test_different_widths_and_depths_train_the_student(name, params, kind, level):
    """Teacher 6x32, student 3x16: a few gradient steps on the student's hidden states reduce the loss."""
    hs, ht, mask = make_batch(seed=11, ds=16, dt=32, n_s=3, n_t=6)
    leaf = [h.clone().requires_grad_(True) for h in hs]
    opt = torch.optim.Adam(leaf, lr=0.05)
    first = None
    for _ in range(30):
        opt.zero_grad()
        v = loss_value(name, params, tuple(leaf), ht, mask)
        v.backward()
        first = float(v.detach()) if first is None else first
        opt.step()
    assert float(loss_value(name, params, tuple(leaf), ht, mask).detach()) < 0.7 * first


@pytest.mark.parametrize("name,params,kind,level", CASES, ids=IDS)
def test_finite_for_coincident_vectors_and_all_padding(name, params, kind, level):
    hs, ht, mask = make_batch(seed=12)
    hs = [h.clone() for h in hs]
    ht = [h.clone() for h in ht]
    for h in hs + ht:
        h[0, 1:4] = h[0, 0]  # four coincident tokens in sentence 0
        h[1] = 0.0  # sentence 1: all-zero vectors
    for h in hs[1:]:
        h[0, 6] = hs[0][0, 6]  # a token identical across the student's layers (coincident for LTR)
    mask = mask.clone()
    mask[2] = 0  # an all-padding row
    leaf = tuple(h.requires_grad_(True) for h in hs)
    v = loss_value(name, params, leaf, tuple(ht), mask)
    v.backward()
    assert torch.isfinite(v)
    assert all(torch.isfinite(h.grad).all() for h in leaf)

    empty = torch.zeros_like(mask)  # an all-padding batch gives exactly 0
    leaf = tuple(h.detach().clone().requires_grad_(True) for h in hs)
    v = loss_value(name, params, leaf, tuple(ht), empty)
    v.backward()
    assert float(v.detach()) == 0.0
    assert all(torch.isfinite(h.grad).all() for h in leaf)


def test_half_precision_inputs_are_upcast():
    hs, ht, mask = make_batch(seed=13)
    full = loss_value("wr_triple", {"window": 5}, hs, ht, mask)
    half = loss_value("wr_triple", {"window": 5}, tuple(h.bfloat16() for h in hs), tuple(h.bfloat16() for h in ht), mask)
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert float(half) == pytest.approx(float(full), rel=0.1)


def test_weighted_loss_builds_and_runs():
    hs, ht, mask = make_batch(seed=14)
    hs = tuple(h.clone().requires_grad_(True) for h in hs)
    specs = [
        {"name": "wr_pair", "weight": 100},
        {"name": "wr_triple", "weight": 1000, "window": 21},
        {"name": "ltr_pair", "weight": 100, "form": "distance"},
        {"name": "ltr_triple", "weight": 1000, "layer_map": [[0, 0], [2, 1], [4, 2], [6, 3]]},
    ]
    wl = WeightedLoss(specs, {"student_hidden": 16, "teacher_hidden": 32})
    assert wl.teacher_needs == {"hidden_states"}
    total, logs = wl({"hidden_states": hs, "logits": None}, {"hidden_states": ht}, {"attention_mask": mask, "label": None})
    total.backward()
    assert set(logs) == {"wr_pair", "wr_triple", "ltr_pair", "ltr_triple"}
    expected = 100 * logs["wr_pair"] + 1000 * logs["wr_triple"] + 100 * logs["ltr_pair"] + 1000 * logs["ltr_triple"]
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    assert all(h.grad is not None and torch.isfinite(h.grad).all() for h in hs)


@pytest.mark.parametrize(
    "spec,words",
    [
        ({"name": "wr_pair", "form": "angle"}, "form"),
        ({"name": "wr_triple", "window": 1}, "window"),
        ({"name": "wr_triple", "criterion": "l1"}, "criterion"),
        ({"name": "ltr_pair", "layer_map": [[0]]}, "layer_map"),
        ({"name": "wr_pair", "temperature": 0}, "temperature"),
        ({"name": "wr_pair", "windw": 3}, "windw"),
    ],
)
def test_bad_parameters_are_user_errors(spec, words):
    with pytest.raises(UserError, match=words):
        WeightedLoss([spec])


def test_layer_map_out_of_range_and_too_few_layers_are_user_errors():
    hs, ht, mask = make_batch()
    with pytest.raises(UserError, match="out of range"):
        loss_value("wr_pair", {"layer_map": [[7, 1]]}, hs, ht, mask)
    with pytest.raises(UserError, match="at least 3 matched layers"):
        loss_value("ltr_triple", {"layer_map": [[0, 0], [6, 3]]}, hs, ht, mask)


# --------------------------------------------------------------------------------------------------
# scale: paper. The CKD authors' normalisation, written out densely: every position of the padded set is
# looped over, the diagonal and degenerate triples are terms computed as the authors' code computes them
# (a zero difference vector normalises to 0, so such angles are 0, and j == k gives 1), and the sum is
# divided by the product of the mask over all those positions (windowed triples: anchor valid x K^2 slots).
# --------------------------------------------------------------------------------------------------


def authors_unit(v: torch.Tensor) -> torch.Tensor:
    return v / max(float(v.norm()), 1e-12)


def authors_set(kind: str, vs, vt, valid: list[bool], params) -> tuple[float, int]:
    """(sum of every term over the padded set, the authors' count) for one set of positions 0..S-1."""
    S = len(vs)
    total, count = 0.0, 0
    if kind == "pair_cosine_kl":
        T = params.get("temperature", 1.0)
        for i in range(S):
            count += sum(valid[i] and valid[j] for j in range(S))
            partners = [j for j in range(S) if valid[i] and valid[j] and j != i]
            if not partners:
                continue
            zs = {j: ref_cos(vs[i], vs[j]) / T for j in partners}
            zt = {j: ref_cos(vt[i], vt[j]) / T for j in partners}
            log_zs, log_zt = math.log(sum(map(math.exp, zs.values()))), math.log(sum(map(math.exp, zt.values())))
            for j in range(S):  # the diagonal and padding have p_t(j|i) = 0 and add 0
                p_t = math.exp(zt[j] - log_zt) if j in partners else 0.0
                total += p_t * ((zt[j] - log_zt) - (zs[j] - log_zs)) if p_t else 0.0
        return total, count
    if kind == "pair_distance":
        def dist(v):  # all S x S entries, the diagonal (0) included, normalised by the mean of the nonzero valid ones
            d = [[float((v[i] - v[j]).norm()) if valid[i] and valid[j] else 0.0 for j in range(S)] for i in range(S)]
            nonzero = [x for row in d for x in row if x > 0]
            mean = sum(nonzero) / len(nonzero) if nonzero else 1.0
            return [[x / mean for x in row] for row in d]
        ds, dt = dist(vs), dist(vt)
        for i in range(S):
            for j in range(S):
                if valid[i] and valid[j]:
                    total += ref_huber(ds[i][j] - dt[i][j])
                    count += 1
        return total, count
    window, crit = params.get("window"), params.get("criterion", "mse")
    us = [[authors_unit(vs[j] - vs[i]) for j in range(S)] for i in range(S)]
    ut = [[authors_unit(vt[j] - vt[i]) for j in range(S)] for i in range(S)]
    for i in range(S):
        if window is None:
            slots = list(range(S))
        else:
            h = (window - 1) // 2
            slots = list(range(i - h, i + h + 1))
            count += valid[i] * len(slots) ** 2
        for j in slots:
            for k in slots:
                inside = 0 <= j < S and 0 <= k < S and valid[i] and valid[j] and valid[k]
                if window is None:
                    count += inside
                if inside:
                    e = float(us[i][j] @ us[i][k]) - float(ut[i][j] @ ut[i][k])
                    total += e * e if crit == "mse" else ref_huber(e)
    return total, count


def authors_value(kind, level, hs, ht, mask, layer_map, params) -> float:
    """WR: one set per sentence and matched layer pair (all L positions); LTR: one set per token (M layers)."""
    total, count = 0.0, 0
    B, L = mask.shape
    if level == "wr":
        sets = [([hs[s_i][b, p].double() for p in range(L)], [ht[t_i][b, p].double() for p in range(L)],
                 [bool(mask[b, p]) for p in range(L)]) for t_i, s_i in layer_map for b in range(B)]
    else:
        sets = [([hs[s_i][b, p].double() for _, s_i in layer_map], [ht[t_i][b, p].double() for t_i, _ in layer_map],
                 [bool(mask[b, p])] * len(layer_map)) for b in range(B) for p in range(L)]
    for vs, vt, valid in sets:
        s, c = authors_set(kind, vs, vt, valid, params)
        total, count = total + s, count + c
    return total / max(count, 1)


def ragged_batch(seed: int):
    """Four sentences of lengths 9, 1, 4 and 6 (padding on the right)."""
    hs, ht, mask = make_batch(seed=seed, B=4, L=9)
    mask = torch.zeros(4, 9)
    for b, n in enumerate((9, 1, 4, 6)):
        mask[b, :n] = 1
    return hs, ht, mask


@pytest.mark.parametrize("batch", ["make_batch", "ragged"])
@pytest.mark.parametrize("name,params,kind,level", CASES, ids=IDS)
def test_paper_scale_matches_authors_normalisation(name, params, kind, level, batch):
    hs, ht, mask = make_batch(seed=15) if batch == "make_batch" else ragged_batch(seed=16)
    layer_map = uniform_layer_map(len(ht) - 1, len(hs) - 1)
    ref = authors_value(kind, level, hs, ht, mask, layer_map, params)
    got = loss_value(name, {**params, "scale": "paper"}, hs, ht, mask)
    assert ref > 0
    assert float(got) == pytest.approx(ref, abs=1e-6, rel=1e-6)


@pytest.mark.parametrize("name,params,kind,level", CASES, ids=IDS)
def test_scale_raykd_is_the_default_and_unchanged(name, params, kind, level):
    hs, ht, mask = ragged_batch(seed=17)
    default = loss_value(name, params, hs, ht, mask)
    explicit = loss_value(name, {**params, "scale": "raykd"}, hs, ht, mask)
    ref = (ref_wr if level == "wr" else ref_ltr)(kind, hs, ht, mask, uniform_layer_map(len(ht) - 1, len(hs) - 1), params)
    assert float(explicit) == float(default)
    assert float(default) == pytest.approx(ref, abs=1e-5, rel=1e-5)


def paper_over_raykd(name, params, lengths, M) -> float:
    """The README's table: raykd's count over the authors' count (WR per layer pair, LTR per token)."""
    n = lengths
    if name == "wr_pair":
        raykd = sum(x for x in n if x > 1) if params.get("form", "cosine_kl") == "cosine_kl" else sum(x * (x - 1) for x in n)
        return raykd / sum(x * x for x in n)
    if name == "wr_triple":
        return sum(x * (x - 1) * (x - 2) for x in n) / sum(x**3 for x in n)
    if name == "ltr_pair":
        return 1 / M if params.get("form", "cosine_kl") == "cosine_kl" else (M - 1) / M
    return (M - 1) * (M - 2) / M**2


@pytest.mark.parametrize("name,params", [("wr_pair", {}), ("wr_pair", {"form": "distance"}), ("wr_triple", {"window": None}),
                                         ("ltr_pair", {}), ("ltr_pair", {"form": "distance"}), ("ltr_triple", {})])
def test_paper_scale_factor_per_loss(name, params):
    hs, ht, mask = ragged_batch(seed=18)
    raykd = float(loss_value(name, params, hs, ht, mask))
    paper = float(loss_value(name, {**params, "scale": "paper"}, hs, ht, mask))
    M = len(uniform_layer_map(len(ht) - 1, len(hs) - 1))
    assert paper / raykd == pytest.approx(paper_over_raykd(name, params, [9, 1, 4, 6], M), rel=1e-6)


def test_bad_scale_is_refused_with_the_choices():
    with pytest.raises(UserError, match=r"losses\.0\.scale: Input should be 'raykd' or 'paper', got 'bogus'"):
        WeightedLoss([{"name": "wr_pair", "scale": "bogus"}])
    from raykd.config import parse_config

    with pytest.raises(UserError, match=r"scale.*'raykd' or 'paper'"):
        parse_config({"method": "kd", "losses": [{"name": "ltr_triple", "weight": 10, "scale": "bogus"}]})
