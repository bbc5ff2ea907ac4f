"""A tiny Qwen2.5-VL-compatible tokenizer built in code, for tests and the CPU demo.

Nothing can be downloaded from a model hub, yet the data pipeline, the model tests and the end-to-end
demo all need a tokenizer that behaves like Qwen's where it matters: the same special tokens (so the
chat template, pad expansion, label masking and mRoPE all see the real structure), byte-level
encoding of any text, offsets for label masking, and Qwen2.5-VL's chat template.

The vocabulary is the 256 byte-level symbols (ids 0..255, no merges: one token per UTF-8 byte),
followed by Qwen2.5's 14 special tokens in their real order. With ``real_ids=True`` the special
tokens sit at Qwen's real ids (151643..151656), so ids can be compared with a released checkpoint's
tokenizer; the embedding table must then have at least ``vocab_size_of(tok)`` rows.

    tok = build_tiny_tokenizer()
    tok.apply_chat_template(messages, tokenize=False)
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from megatron_vrft.data.template import QWEN2_5_VL_CHAT_TEMPLATE

# Qwen2.5's special tokens in vocabulary order; the first one has id 151643 in the released tokenizer.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_FIRST_SPECIAL_ID = 151643
_NUM_BYTE_TOKENS = 256


def build_tiny_tokenizer(real_ids: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with Qwen2.5-VL's special tokens and chat template.

    real_ids=False: specials at ids 256..269 (vocab of 270, good for tiny models);
    real_ids=True: specials at 151643..151656, as in the released Qwen2.5-VL tokenizer.
    """
    vocab = {sym: i for i, sym in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    first = QWEN_FIRST_SPECIAL_ID if real_ids else _NUM_BYTE_TOKENS
    # Putting the specials in the model vocabulary pins their ids: `add_special_tokens` reuses the
    # id of a token the model already knows instead of appending a new one.
    for offset, token in enumerate(QWEN_SPECIAL_TOKENS):
        vocab[token] = first + offset
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def vocab_size_of(tokenizer) -> int:
    """Rows an embedding table needs for this tokenizer (max id + 1; ids may have gaps)."""
    return max(tokenizer.get_vocab().values()) + 1
