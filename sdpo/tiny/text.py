"""Tiny text encoders and tokenizers, built offline (no vocabulary download): shared by every tiny model."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

TEXT_DIM = 32


def clip_tokenizer(out: Path):
    """A byte-level CLIP tokenizer with no merges: every byte is a token, so any prompt encodes."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77)
    tok.save_pretrained(out)
    return tok


def t5_tokenizer(out: Path, max_length: int = 32):
    """A T5 tokenizer built offline: a ``tokenizers`` Unigram model over printable ASCII (plus a few
    accented letters and the word-boundary mark), ``</s>`` appended, as T5's post-processor does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\u2581"] + list("\u00e9\u00e0\u00e8\u00fc\u00f6\u00e4\u00e7\u00f1")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -2.0) for c in chars]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok = T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                          extra_ids=0, model_max_length=max_length)  # fmt: skip
    tok.save_pretrained(out)
    return tok


def t5_encoder(seed_offset: int = 0):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=128, d_model=TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu")  # fmt: skip
    return T5EncoderModel(cfg).eval()


def text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_DIM,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        **extra,
    )
