"""Train a byte-pair-encoding tokenizer on a dataset's training text and save it where an ``hf`` model's
``args.tokenizer`` can read it (a directory loadable with ``AutoTokenizer``).

    python docs/examples/train_bpe_tokenizer.py movie_reviews runs/bpe-movie_reviews --vocab-size 4000

Only training rows are read (the same split raykd trains on), so the tokenizer has never seen the
rows it is evaluated on.
"""

from __future__ import annotations

import argparse

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from raykd.config import DataConfig
from raykd.data.prepare import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="a registered text dataset (raykd data list)")
    ap.add_argument("out", help="directory to write the tokenizer to")
    ap.add_argument("--vocab-size", type=int, default=4000)
    args = ap.parse_args()
    texts = [str(t) for t in prepare(DataConfig(name=args.dataset)).train["text"]]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=args.vocab_size, special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers import decoders, processors

    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(args.out)
    print(f"{len(fast):,}-token BPE tokenizer trained on {len(texts):,} {args.dataset} training rows -> {args.out}")


if __name__ == "__main__":
    main()
