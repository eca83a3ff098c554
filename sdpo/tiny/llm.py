"""Tiny stand-ins for the LLM text encoders of the 2026 image models, built offline.

Qwen-Image (Qwen2.5-VL), FLUX.2 [klein] and Z-Image (Qwen3) and FLUX.2 [dev] (Mistral Small 3.x with a Pixtral
processor) encode prompts with chat-formatted LLMs.  Their pipelines depend on the tokenizer in two ways
a random vocabulary would break: Qwen-Image drops a fixed count of 34 template tokens (the system prompt of its
template, ``QwenImagePipeline.prompt_template_encode_start_idx``), and the chat templates wrap every prompt in
role markers.  So the tiny tokenizers here are byte-level BPE tokenizers (every byte is a token: any prompt
encodes) whose merges make each word of the templates and system prompts one token, as the real vocabularies
do, with the real special tokens and a chat template that writes the real models' turn format (facts of the
released ``tokenizer_config.json`` files, written here from their documented format, not copied).

The text encoders are the released transformers classes with a few channels but as many layers as the pipelines
read hidden states from: FLUX.2 stacks layers (10, 20, 30) of Mistral and (9, 18, 27) of Qwen3, Z-Image takes the
second-to-last, Qwen-Image the last.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# The turn format of Qwen2.5 / Qwen3 chat templates: ``<|im_start|>role\ncontent<|im_end|>\n`` per message, then
# ``<|im_start|>assistant\n`` for a generation prompt; Qwen3 with ``enable_thinking=False`` adds an empty think block.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<think>", "</think>"]  # fmt: skip
# Mistral's instruct format: ``<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST]``.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['content'] is string %}{% set text = m['content'] %}{% else %}{% set text = m['content'] | "
    "selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}{% endif %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]{{ text }}[/INST]{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}"
)
MISTRAL_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                   "[IMG]", "[IMG_BREAK]", "[IMG_END]"]  # fmt: skip
# Words made single tokens: those of the templates and system prompts, and of the tiny captions (sdpo.tiny.images).
COMMON_WORDS = "a an the of and in on with at to is by red green blue yellow circle square triangle shape image photo"


def byte_level_bpe(texts: tuple[str, ...], pre_tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary and merge list trained (``tokenizers``' BPE trainer, no size limit) on ``texts``
    cut by ``pre_tokenizer``: all 256 byte symbols, plus merges until every word of ``texts`` is one token.  BPE
    encodes a word of its training text exactly as training segmented it, so each of those words is one token and
    any other text is bytes (or the pieces it shares with them)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer
    words = [re.sub(r"<\|[^|]*\|>|\[/?[A-Z_]+\]|\{\}", "\n", t) for t in (COMMON_WORDS, *texts)]  # no special tokens
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    backend.train_from_iterator(words, trainer)
    model = json.loads(backend.to_str())["model"]
    return model["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]


def qwen_tokenizer(out: Path, texts: tuple[str, ...] = (), max_length: int = 64):
    """A ``Qwen2Tokenizer`` (the class of Qwen2.5-VL's and Qwen3's tokenizers) over a byte-level BPE that makes the
    words of ``texts`` single tokens, with Qwen's special tokens and chat template."""
    from tokenizers import Regex, pre_tokenizers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    split = pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated")
    vocab, merges = byte_level_bpe(
        texts, pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    )
    for t in QWEN_SPECIAL:
        vocab[t] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         additional_special_tokens=QWEN_SPECIAL[1:], model_max_length=max_length)  # fmt: skip
    tok.chat_template = QWEN_CHAT_TEMPLATE
    tok.save_pretrained(out)
    return tok


def mistral_processor(out: Path, texts: tuple[str, ...] = (), max_length: int = 64):
    """A ``PixtralProcessor`` (FLUX.2 [dev]'s tokenizer folder: Mistral Small 3.x's processor) over a byte-level BPE
    tokenizer with Mistral's special tokens and instruct format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PixtralImageProcessor, PixtralProcessor, PreTrainedTokenizerFast

    vocab, merges = byte_level_bpe(texts, pre_tokenizers.ByteLevel(add_prefix_space=False))
    for t in MISTRAL_SPECIAL:
        vocab[t] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", additional_special_tokens=MISTRAL_SPECIAL[4:],
                                  model_max_length=max_length)  # fmt: skip
    proc = PixtralProcessor(image_processor=PixtralImageProcessor(patch_size=8), tokenizer=tok, patch_size=8,
                            chat_template=MISTRAL_CHAT_TEMPLATE)  # fmt: skip
    proc.save_pretrained(out)
    return proc


def vocab_size(tokenizer) -> int:
    """Rows the embedding table needs: every id the tokenizer can produce."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    return max(tok.get_vocab().values()) + 1


def qwen3_config(vocab: int, layers: int, hidden: int = 16, **extra):
    """A ``Qwen3Config`` of ``hidden`` channels (2 heads of 8) and ``layers`` layers."""
    from transformers import Qwen3Config

    return Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
                       tie_word_embeddings=True, **extra)  # fmt: skip


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
