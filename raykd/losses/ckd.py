"""Contextual knowledge distillation (CKD) relation losses: Word Relation and Layer Transforming Relation.

Park, Kim, Yang, "Distilling Linguistic Context for Language Model Compression" (EMNLP 2021) distil
*relations between representations* instead of the representations, so teacher and student may have
any widths and depths and no projection is learned.

Every relation is defined on a *set* of vectors ``x[n, s, :]`` (s = 0..S-1) with a validity mask
``mask[n, s]``:

* **Word Relation (WR)**: one set per sentence and matched layer; the set is the sentence's tokens
  (N = B, S = L). Computed at every (teacher_layer, student_layer) pair of the layer map, averaged.
* **Layer Transforming Relation (LTR)**: one set per token; the set is that token's representations at
  the M matched layers (N = B*L, S = M), stacked separately for teacher and student.

Relations (r_i = x[n, i]; all of them are invariant to rotations of the vectors, the last two also to
translations and all three to a common rescaling):

* pair-wise, ``form="cosine_kl"``: phi(i, j) = cos(r_i, r_j) / T softmax-normalised over j != i (valid
  j only), compared by KL(p_t(.|i) || p_s(.|i)), averaged over valid anchors i;
* pair-wise, ``form="distance"``: phi(i, j) = |r_i - r_j| / mean_{valid i'!=j'} |r_i' - r_j'| (mean
  taken per set), compared with Huber (smooth L1, beta = 1), averaged over valid pairs i != j;
* triple-wise angle: psi(i, j, k) = <(r_j - r_i)/|r_j - r_i|, (r_k - r_i)/|r_k - r_i|> over distinct
  valid i, j, k, compared with MSE (or Huber), averaged over valid triples. For WR, ``window = w``
  keeps only j, k within +-(w-1)//2 positions of the anchor i (paper default w = 21).

Distances and angles are computed from the Gram matrix G = X X^T of the set after centring it on the
mean of its valid vectors (relations are translation-invariant; centring keeps G's entries small so
|r_j - r_i|^2 = G_ii + G_jj - 2 G_ij loses little precision):
psi(i, j, k) = (G_jk - G_ij - G_ik + G_ii) / (|r_j - r_i| |r_k - r_i|). Norms are eps-safe
(sqrt(max(., eps))), angles clamped to [-1, 1], softmaxes masked with a finite fill, so coincident
vectors and all-padding rows give finite values and gradients; an all-padding batch gives 0.
Padding never enters a relation: every term involving an invalid position is removed from both the sum
and the count. Teacher relations are computed without autograd. Half-precision inputs are upcast to
float32.

Scale (``scale="raykd" | "paper"``): raykd divides each loss's sum by the number of terms in it (anchors,
pairs i != j, distinct triples). The authors' code divides the same sum by a count that also holds the
diagonal and the degenerate triples, whose terms are 0: n^2 per set of n valid vectors for pairs, n^3 for
all triples, n*K^2 for windowed triples (K = 2*((w-1)//2) + 1 slots per anchor). ``scale="paper"`` keeps
raykd's sum and divides it by the authors' count, computed from the mask, so a weight from the paper
means what it meant there. Per set (WR: n tokens; LTR: M layers) raykd's count -> the authors':
cosine_kl pair n -> n^2 (LTR: M times smaller), distance pair n(n-1) -> n^2, all triples n(n-1)(n-2) ->
n^3 (LTR: M(M-1)(M-2)/M^3). Only the count changes: in windowed WR triples the authors' sum also has
neighbours that are padding or clamped past the sentence's end, which stay out here.

Memory (float32, 4 bytes per element, per matched layer, student side, autograd included)
------------------------------------------------------------------------------------------
B batch, L length, D width, w window, M matched layers, c anchors per chunk (``anchor_chunk``).
The inputs [B, L, D] are not counted. "k x" is the number of same-sized intermediates kept alive
at the peak (autograd saves some for backward); measured peaks: docs/ckd_memory.md
(``benchmarks/ckd_losses.py``). Backward also allocates the student gradients, B*L*D per hidden state.

=====================  ===========================  ==============================================
loss                   dominant tensors             elements (approx.)
=====================  ===========================  ==============================================
WR pair (both forms)   Gram, cos/dist, softmax      ~6 x B*L^2          + B*L*D (centred copy)
WR triple, full        angle per anchor chunk       ~8 x B*c*L^2 (c = L unchunked: B*L^3)
                                                    + 3 x B*L^2; chunks > 1 are recomputed in
                                                    backward (checkpointing), so only one chunk's
                                                    intermediates are alive at a time
WR triple, window w    angle per anchor, w x w      ~8 x B*L*w^2  + 3 x B*L^2
LTR pair               Gram over layers             ~6 x B*L*M^2        + B*L*M*D (stacked copy)
LTR triple             angle over layer triples     ~8 x B*L*M^3        + B*L*M*D (stacked copy)
=====================  ===========================  ==============================================

At B=32, L=128 one B*L^3 float32 tensor is 268 MB, so the unchunked full-triple WR needs several GB
per matched layer; the default ``anchor_chunk`` bounds one chunk to ~2^21 elements (8 MB per
intermediate). With w = 21 one B*L*w^2 tensor is 7 MB. None of the forms has a term in B*L*L*D:
no [B, L, L, D] difference tensor is ever built.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.utils.checkpoint import checkpoint

from raykd.schema import FieldError
from raykd.errors import UserError
from raykd.losses import needs, register_loss
from raykd.losses.features import FeatureParams, match_positions, module_pairs, tensor_of, tokens
from raykd.losses.kd import uniform_layer_map

EPS = 1e-12  # floor under squared norms / squared distances before sqrt
NEG = -1e9  # finite "minus infinity" for masked softmax entries (no NaN on all-masked rows)
CHUNK_ELEMENTS = 2**21  # default bound on N * c * K * K per anchor chunk (8 MB float32; measured faster than larger chunks on CPU)

PairForm = Literal["cosine_kl", "distance"]
Criterion = Literal["mse", "huber"]
Scale = Literal["raykd", "paper"]
PAIR_FORMS = get_args(PairForm)
CRITERIA = get_args(Criterion)


# --------------------------------------------------------------------------------------------------
# Helpers on sets x [N, S, D] with mask [N, S] (bool)
# --------------------------------------------------------------------------------------------------


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _centred_gram(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G = X_c X_c^T with X_c = x minus the mean of the valid vectors of its set: [N, S, S]."""
    m = mask.to(x.dtype).unsqueeze(-1)
    mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
    xc = (x - mean) * m  # padding rows set to 0 so their (masked) relations stay finite
    return xc @ xc.transpose(1, 2)


def _distances(gram: torch.Tensor) -> torch.Tensor:
    """|r_i - r_j| = sqrt(max(G_ii + G_jj - 2 G_ij, eps)): [N, S, S]."""
    sq = gram.diagonal(dim1=1, dim2=2)
    d2 = sq.unsqueeze(2) + sq.unsqueeze(1) - 2.0 * gram
    return d2.clamp_min(EPS).sqrt()


def _pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """Valid pairs (i, j): both valid and i != j: [N, S, S] bool."""
    S = mask.shape[1]
    off_diag = ~torch.eye(S, dtype=torch.bool, device=mask.device)
    return mask.unsqueeze(2) & mask.unsqueeze(1) & off_diag


def _authors_count(mask: torch.Tensor, power: int) -> torch.Tensor:
    """The count the authors' code divides by, summed over sets: n^power per set of n valid vectors
    (all pairs or triples of valid positions, the diagonal and repeated indices included)."""
    return (mask.sum(1) ** power).sum()


def _criterion(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "mse":
        return lambda a, b: (a - b) ** 2
    return lambda a, b: F.smooth_l1_loss(a, b, reduction="none", beta=1.0)


# --------------------------------------------------------------------------------------------------
# Pair-wise relations
# --------------------------------------------------------------------------------------------------


def pair_cosine_kl(xs: torch.Tensor, xt: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0,
                   scale: str = "raykd") -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over valid anchors i of KL(p_t(.|i) || p_s(.|i)), p(j|i) = softmax_{j != i, valid}(cos(r_i, r_j)/T).

    Returns (sum, number of anchors with at least one valid partner; scale "paper": n^2 per set).
    """
    pairs = _pair_mask(mask)

    def log_p(x: torch.Tensor) -> torch.Tensor:
        x = _upcast(x)
        u = x / (x * x).sum(-1, keepdim=True).clamp_min(EPS).sqrt()  # eps-safe unit vectors
        cos = u @ u.transpose(1, 2)  # phi(i, j) = cos(r_i, r_j)
        return F.log_softmax((cos / temperature).masked_fill(~pairs, NEG), dim=-1)

    log_p_s = log_p(xs)
    with torch.no_grad():
        log_p_t = log_p(xt)
    kl = torch.where(pairs, log_p_t.exp() * (log_p_t - log_p_s), torch.zeros_like(log_p_s)).sum(-1)  # [N, S]
    anchors = pairs.any(-1)
    return kl[anchors].sum(), anchors.sum() if scale == "raykd" else _authors_count(mask, 2)


def pair_distance(xs: torch.Tensor, xt: torch.Tensor, mask: torch.Tensor, scale: str = "raykd") -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over valid pairs i != j of Huber(d_s(i,j), d_t(i,j)), d = |r_i - r_j| / mean over the set's valid pairs.

    Returns (sum, number of valid pairs; scale "paper": n^2 per set).
    """
    pairs = _pair_mask(mask)

    def normalised_distance(x: torch.Tensor) -> torch.Tensor:
        d = _distances(_centred_gram(_upcast(x), mask)) * pairs
        mean = d.sum((1, 2), keepdim=True) / pairs.sum((1, 2), keepdim=True).clamp_min(1)
        return d / mean.clamp_min(EPS**0.5)  # phi(i, j) = |r_i - r_j| / mean |r_i' - r_j'|

    d_s = normalised_distance(xs)
    with torch.no_grad():
        d_t = normalised_distance(xt)
    err = F.smooth_l1_loss(d_s, d_t, reduction="none", beta=1.0)
    return err[pairs].sum(), pairs.sum() if scale == "raykd" else _authors_count(mask, 2)


# --------------------------------------------------------------------------------------------------
# Triple-wise relation (angles), all triples or a local window, chunked over anchors
# --------------------------------------------------------------------------------------------------


def _neighbours(S: int, window: int | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour positions per anchor [S, K] (clamped into range) and whether each slot is a real neighbour.

    window None: every position is a candidate (K = S). window w: positions i - h .. i + h, h = (w-1)//2.
    A slot is a real neighbour when it is in range and is not the anchor itself.
    """
    anchor = torch.arange(S, device=device).unsqueeze(1)
    if window is None:
        pos = torch.arange(S, device=device).expand(S, S)
    else:
        h = (window - 1) // 2
        pos = anchor + torch.arange(-h, h + 1, device=device)
    real = (pos >= 0) & (pos < S) & (pos != anchor)
    return pos.clamp(0, S - 1), real


def _angles(gram: torch.Tensor, dist: torch.Tensor, anchors: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
    """psi(i, j, k) for anchors i [c], neighbours nbr [c, K]: [N, c, K, K].

    psi = <r_j - r_i, r_k - r_i> / (|r_j - r_i| |r_k - r_i|) = (G_jk - G_ij - G_ik + G_ii) / (d_ij d_ik).
    """
    N, S, _ = gram.shape
    c, K = nbr.shape
    flat = (nbr.unsqueeze(2) * S + nbr.unsqueeze(1)).reshape(-1)
    g_jk = gram.reshape(N, S * S)[:, flat].reshape(N, c, K, K)
    a = anchors.unsqueeze(1)
    g_ij = gram[:, a, nbr]  # [N, c, K]
    d_ij = dist[:, a, nbr]
    g_ii = gram[:, anchors, anchors].reshape(N, c, 1, 1)
    num = g_jk - g_ij.unsqueeze(3) - g_ij.unsqueeze(2) + g_ii
    return (num / (d_ij.unsqueeze(3) * d_ij.unsqueeze(2))).clamp(-1.0, 1.0)


def triple_angle(
    xs: torch.Tensor,
    xt: torch.Tensor,
    mask: torch.Tensor,
    window: int | None = None,
    criterion: str = "mse",
    anchor_chunk: int | None = None,
    scale: str = "raykd",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over valid triples (distinct valid i, j, k; j, k in the window of i) of crit(psi_s, psi_t).

    Anchors are processed in chunks of ``anchor_chunk`` (default: ~2^21 elements per chunk); with more
    than one chunk each chunk is recomputed in backward (activation checkpointing) so only one chunk's
    [N, c, K, K] intermediates are alive at a time. Returns (sum, number of valid triples; scale
    "paper": n^3 per set, or n*K^2 with a window of K slots).
    """
    N, S = mask.shape
    nbr_all, real_all = _neighbours(S, window, mask.device)
    K = nbr_all.shape[1]
    crit = _criterion(criterion)

    gram_s = _centred_gram(_upcast(xs), mask)
    dist_s = _distances(gram_s)
    with torch.no_grad():
        gram_t = _centred_gram(_upcast(xt), mask)
        dist_t = _distances(gram_t)

    def chunk_error(gram_s: torch.Tensor, dist_s: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        anchors = torch.arange(lo, hi, device=mask.device)
        nbr, real = nbr_all[lo:hi], real_all[lo:hi]
        valid_jk = mask[:, nbr] & real  # [N, c, K]
        distinct = ~torch.eye(K, dtype=torch.bool, device=mask.device)
        triples = mask[:, lo:hi, None, None] & valid_jk.unsqueeze(3) & valid_jk.unsqueeze(2) & distinct
        psi_s = _angles(gram_s, dist_s, anchors, nbr)
        with torch.no_grad():
            psi_t = _angles(gram_t, dist_t, anchors, nbr)
        err = torch.where(triples, crit(psi_s, psi_t), torch.zeros_like(psi_s))
        return err.sum(), triples.sum()

    c = anchor_chunk or max(1, CHUNK_ELEMENTS // max(1, N * K * K))
    bounds = [(lo, min(S, lo + c)) for lo in range(0, S, c)]
    recompute = len(bounds) > 1 and torch.is_grad_enabled() and gram_s.requires_grad
    total, count = gram_s.new_zeros(()), torch.zeros((), dtype=torch.long, device=mask.device)
    for lo, hi in bounds:
        if recompute:
            err, n = checkpoint(chunk_error, gram_s, dist_s, lo, hi, use_reentrant=False)
        else:
            err, n = chunk_error(gram_s, dist_s, lo, hi)
        total, count = total + err, count + n
    if scale == "paper":
        count = _authors_count(mask, 3) if window is None else mask.sum() * K * K
    return total, count


# --------------------------------------------------------------------------------------------------
# Word Relation and Layer Transforming Relation over the matched layers
# --------------------------------------------------------------------------------------------------

Relation = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _token_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    return mask.to(device=like.device) > 0


def word_relation(
    hs: list[torch.Tensor] | tuple[torch.Tensor, ...],
    ht: list[torch.Tensor] | tuple[torch.Tensor, ...],
    mask: torch.Tensor | None,
    layer_map: list[tuple[int, int]],
    relation: Relation,
) -> torch.Tensor:
    """WR: relation between the tokens of each sentence, at every (teacher, student) layer pair.

    L_WR = sum_{(t, s) in map} sum_valid l(rel(h_s[s]), rel(h_t[t])) / (number of valid terms).
    """
    m = _token_mask(mask, hs[0])
    total, count = hs[0].new_zeros((), dtype=torch.float32), 0
    for t_i, s_i in layer_map:
        err, n = relation(hs[s_i], ht[t_i], m)
        total, count = total + err, count + n
    return total / torch.clamp(torch.as_tensor(count, device=total.device), min=1)


def layer_transforming_relation(
    hs: list[torch.Tensor] | tuple[torch.Tensor, ...],
    ht: list[torch.Tensor] | tuple[torch.Tensor, ...],
    mask: torch.Tensor | None,
    layer_map: list[tuple[int, int]],
    relation: Relation,
) -> torch.Tensor:
    """LTR: relation, for each token, between its representations at the M matched layers.

    Each token's set is [M, D] (student and teacher stacked separately, so widths may differ);
    padding tokens contribute nothing. L_LTR = sum_valid l(rel_s, rel_t) / (number of valid terms).
    """
    B, L = hs[0].shape[:2]
    m = _token_mask(mask, hs[0])
    M = len(layer_map)
    xs = torch.stack([hs[s_i] for _, s_i in layer_map], dim=2).reshape(B * L, M, -1)  # [B*L, M, Ds]
    xt = torch.stack([ht[t_i] for t_i, _ in layer_map], dim=2).reshape(B * L, M, -1)  # [B*L, M, Dt]
    set_mask = m.reshape(B * L, 1).expand(B * L, M)
    total, count = relation(xs, xt, set_mask)
    return total / count.clamp_min(1)


# --------------------------------------------------------------------------------------------------
# Registered losses
# --------------------------------------------------------------------------------------------------


class RelationParams(FeatureParams):
    """Parameters shared by the relation losses: the layer map (or module paths), how many matched
    layers it needs, and the scale of the value. Relations compare within each model, so widths may
    differ and nothing is projected."""

    min_layers: ClassVar[int] = 1
    scale: Scale = Field("raykd", description="raykd: mean over real anchors, pairs and triples; paper: the same sum "
                         "divided as the CKD authors' code divides it (diagonal and degenerate triples counted), so "
                         "the paper's weights carry over")

    @model_validator(mode="after")
    def _enough_layers(self):
        if self.layer_map is not None and len(self.layer_map) < self.min_layers:
            raise FieldError("layer_map", f"needs at least {self.min_layers} matched layers, layer_map has {len(self.layer_map)}")
        if self.module_pairs and len(self.module_pairs) < self.min_layers:
            raise FieldError("teacher_module", f"needs at least {self.min_layers} matched modules, got {len(self.module_pairs)}")
        return self


class PairParams(RelationParams):
    form: PairForm = Field("cosine_kl", description="cosine_kl: softmax of cosines compared by KL; distance: normalised distances, Huber")
    temperature: float = Field(1.0, gt=0, description="cosine_kl: softmax temperature")


class WRTripleParams(RelationParams):
    window: int | None = Field(21, ge=3, description="j, k within +-(w-1)//2 tokens of the anchor (paper: 21); null: all triples")
    criterion: Criterion = "mse"
    anchor_chunk: int | None = Field(None, ge=1, description="anchors per chunk (default: ~2^21 elements per chunk)")


class LTRPairParams(PairParams):
    min_layers: ClassVar[int] = 2


class LTRTripleParams(RelationParams):
    min_layers: ClassVar[int] = 3
    criterion: Criterion = "mse"


class _RelationLoss(nn.Module):
    """Shared parts: the layer map or module pairs, and the features they select (parameters arrive
    validated by the loss's parameter model, see :func:`raykd.losses.build_one`)."""

    name = ""
    min_layers = 1

    def __init__(self, layer_map: list[list[int]] | None, teacher_module=None, student_module=None, scale: str = "raykd"):
        super().__init__()
        self.layer_map = [tuple(p) for p in layer_map] if layer_map else None
        self.modules_ = module_pairs(teacher_module, student_module)
        self.scale = scale

    def features(self, student_out, teacher_out, batch) -> tuple[list, list, torch.Tensor | None, list[tuple[int, int]]]:
        """(student features, teacher features, token mask, (teacher, student) index pairs)."""
        if self.modules_:  # module outputs by path, as position sequences
            fs, ft = student_out["features"], teacher_out["features"]
            pairs = [match_positions(tensor_of(fs[s]), tensor_of(ft[t])) for t, s in self.modules_]
            hs, ht = [tokens(p[0]) for p in pairs], [tokens(p[1]) for p in pairs]
            mask = batch.get("attention_mask")
            if mask is not None and mask.shape[1] != hs[0].shape[1]:
                mask = None
            return hs, ht, mask, [(i, i) for i in range(len(pairs))]
        hs, ht = student_out["hidden_states"], teacher_out["hidden_states"]
        return hs, ht, batch.get("attention_mask"), self.pairs(hs, ht)

    def pairs(self, hs, ht) -> list[tuple[int, int]]:
        pairs = self.layer_map or uniform_layer_map(len(ht) - 1, len(hs) - 1)
        for t_i, s_i in pairs:
            if t_i >= len(ht) or s_i >= len(hs):
                raise UserError(
                    f"loss {self.name!r}: layer_map pair [{t_i}, {s_i}] is out of range; the teacher has "
                    f"{len(ht)} hidden states and the student {len(hs)} (embedding output = 0)"
                )
        if len(pairs) < self.min_layers:
            raise UserError(f"loss {self.name!r}: needs at least {self.min_layers} matched layers, layer_map has {len(pairs)}")
        return pairs


def _pair_relation(form: str, temperature: float, scale: str) -> Relation:
    if form == "cosine_kl":
        return lambda xs, xt, m: pair_cosine_kl(xs, xt, m, temperature, scale)
    return lambda xs, xt, m: pair_distance(xs, xt, m, scale)


@register_loss("wr_pair", params=PairParams)
class WRPair(_RelationLoss):
    """Pair-wise Word Relation: phi(r_i, r_j) between tokens of one layer, for every matched layer pair."""

    name = "wr_pair"

    def __init__(self, context: dict, layer_map: list[list[int]] | None = None, form: str = "cosine_kl", temperature: float = 1.0,
                 teacher_module=None, student_module=None, scale: str = "raykd"):
        super().__init__(layer_map, teacher_module, student_module, scale)
        self.relation = _pair_relation(form, float(temperature), scale)

    def forward(self, student_out, teacher_out, batch):
        hs, ht, mask, pairs = self.features(student_out, teacher_out, batch)
        return word_relation(hs, ht, mask, pairs, self.relation)


@register_loss("wr_triple", params=WRTripleParams)
class WRTriple(_RelationLoss):
    """Triple-wise Word Relation: angle psi(i, j, k) at token i, all triples or j, k within a window of i."""

    name = "wr_triple"

    def __init__(self, context: dict, layer_map: list[list[int]] | None = None, window: int | None = 21, criterion: str = "mse",
                 anchor_chunk: int | None = None, teacher_module=None, student_module=None, scale: str = "raykd"):
        super().__init__(layer_map, teacher_module, student_module, scale)
        self.window, self.criterion, self.anchor_chunk = window, criterion, anchor_chunk

    def forward(self, student_out, teacher_out, batch):
        hs, ht, mask, pairs = self.features(student_out, teacher_out, batch)
        rel = lambda xs, xt, m: triple_angle(xs, xt, m, self.window, self.criterion, self.anchor_chunk, self.scale)  # noqa: E731
        return word_relation(hs, ht, mask, pairs, rel)


@register_loss("ltr_pair", params=LTRPairParams)
class LTRPair(_RelationLoss):
    """Pair-wise Layer Transforming Relation: phi between one token's representations at two matched layers."""

    name = "ltr_pair"
    min_layers = LTRPairParams.min_layers

    def __init__(self, context: dict, layer_map: list[list[int]] | None = None, form: str = "cosine_kl", temperature: float = 1.0,
                 teacher_module=None, student_module=None, scale: str = "raykd"):
        super().__init__(layer_map, teacher_module, student_module, scale)
        self.relation = _pair_relation(form, float(temperature), scale)

    def forward(self, student_out, teacher_out, batch):
        hs, ht, mask, pairs = self.features(student_out, teacher_out, batch)
        return layer_transforming_relation(hs, ht, mask, pairs, self.relation)


@register_loss("ltr_triple", params=LTRTripleParams)
class LTRTriple(_RelationLoss):
    """Triple-wise Layer Transforming Relation: angle psi over one token's representations at three matched layers."""

    name = "ltr_triple"
    min_layers = LTRTripleParams.min_layers

    def __init__(self, context: dict, layer_map: list[list[int]] | None = None, criterion: str = "mse",
                 teacher_module=None, student_module=None, scale: str = "raykd"):
        super().__init__(layer_map, teacher_module, student_module, scale)
        self.criterion = criterion

    def forward(self, student_out, teacher_out, batch):
        hs, ht, mask, pairs = self.features(student_out, teacher_out, batch)
        rel = lambda xs, xt, m: triple_angle(xs, xt, m, None, self.criterion, scale=self.scale)  # noqa: E731
        return layer_transforming_relation(hs, ht, mask, pairs, rel)


for _name in ("wr_pair", "wr_triple", "ltr_pair", "ltr_triple"):
    needs(_name, "hidden_states")
