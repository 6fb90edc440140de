"""A BERT sequence classifier whose attention heads need not fill its width: what a head-pruned
sub-network (e.g. DynaBERT's at width < 1) is saved as.

``BertConfig`` derives the head size from the width (hidden_size / num_attention_heads), so it cannot
say "k heads of size d_h" with k * d_h < hidden_size. :class:`PrunedBertConfig` adds the field
``attention_head_size``; :class:`PrunedBertForSequenceClassification` is a
``BertForSequenceClassification`` whose every self-attention has ``num_attention_heads`` heads of that
size: W_Q, W_K, W_V are Linear(hidden, heads * head_size) and W_O is Linear(heads * head_size, hidden).
Everything else (embeddings, FFN of ``intermediate_size``, pooler, classifier, the forward pass) is
transformers' own BERT.

This file is self-contained (torch, transformers and the standard library only): ``save_pretrained``
copies it next to the weights and writes ``auto_map`` into config.json, so a process that never
imports raykd loads the directory with
``AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)``. Importing it
registers the model type with the Auto classes, so processes that did need no ``trust_remote_code``:
raykd imports it where it exports sub-networks and where an ``hf`` model is loaded from a directory
(not at ``import raykd.models``: transformers' BERT takes seconds to import, in every Ray worker).
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

MODEL_TYPE = "raykd_pruned_bert"


class PrunedBertConfig(BertConfig):
    """``BertConfig`` plus an explicit head size: ``num_attention_heads`` heads of ``attention_head_size``
    (None: hidden_size // num_attention_heads, as in BERT)."""

    model_type = MODEL_TYPE

    attention_head_size: int | None = None

    @property
    def head_size(self) -> int:
        return self.attention_head_size or self.hidden_size // self.num_attention_heads


class PrunedBertForSequenceClassification(BertForSequenceClassification):
    """``BertForSequenceClassification`` with ``config.num_attention_heads`` heads of
    ``config.attention_head_size`` in every layer (eager, SDPA or any attention backend: the forward
    pass is BERT's own, reading the head size from the attention module)."""

    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig):
        with _any_head_count(config):
            super().__init__(config)
        for layer in self.bert.encoder.layer:
            _narrow_attention(layer.attention, config.num_attention_heads, config.head_size)
        self.init_weights()  # the new projections get BERT's initialisation (a no-op on the meta device)


@contextmanager
def _any_head_count(config: PrunedBertConfig):
    """Build BERT's layers as if with one head: its self-attention refuses head counts that do not
    divide the width, and :func:`_narrow_attention` replaces those projections anyway."""
    heads = config.num_attention_heads
    config.num_attention_heads = 1
    try:
        yield
    finally:
        config.num_attention_heads = heads


def _narrow_attention(attention: nn.Module, heads: int, head_size: int) -> None:
    """Give a ``BertAttention`` ``heads`` heads of ``head_size``: new Q/K/V/O projections and the
    attributes BERT's self-attention forward reads (head size for the reshape, softmax scaling)."""
    att, hidden = attention.self, attention.output.dense.out_features
    inner = heads * head_size
    att.num_attention_heads, att.attention_head_size, att.all_head_size = heads, head_size, inner
    att.scaling = head_size ** -0.5  # softmax(Q K^T / sqrt(d_h))
    att.query, att.key, att.value = (nn.Linear(hidden, inner) for _ in range(3))
    attention.output.dense = nn.Linear(inner, hidden)


def _register() -> None:
    """Auto classes: resolve the model type in this process; write code + ``auto_map`` on save."""
    AutoConfig.register(MODEL_TYPE, PrunedBertConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(PrunedBertConfig, PrunedBertForSequenceClassification, exist_ok=True)
    PrunedBertConfig.register_for_auto_class()
    PrunedBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


_register()
