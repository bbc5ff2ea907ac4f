"""Chat template rendering, pad expansion and SFT target masks, checked against transformers."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from megatron_vrft.data.template import (
    TemplateError,
    VisionTokenIds,
    append_completion,
    encode_chat,
    encode_prompt,
    render_chat,
)
from megatron_vrft.data.testing import build_tiny_tokenizer, vocab_size_of


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


CONVERSATIONS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "user", "content": [{"type": "video", "video": "a.mp4"}, {"type": "text", "text": "Is it\nnormal?"}]},
     {"role": "assistant", "content": "<think>x</think>\n<answer>normal</answer>"}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q1"}, {"type": "image"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "a1"}]},
     {"role": "user", "content": [{"type": "text", "text": "q2"}, {"type": "video"}]},
     {"role": "assistant", "content": "a2 ünï"}],
]


@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("vision_id", [False, True])
def test_render_equals_jinja_template(tok, conv, gen, vision_id):
    messages = CONVERSATIONS[conv]
    text, _ = render_chat(messages, add_generation_prompt=gen, add_vision_id=vision_id)
    assert text == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, add_vision_id=vision_id)


def test_special_ids_small_and_real():
    small = VisionTokenIds.from_tokenizer(build_tiny_tokenizer())
    assert (small.pad, small.im_start, small.im_end, small.vision_start, small.image_pad, small.video_pad) == (
        256, 257, 258, 265, 268, 269)
    real_tok = build_tiny_tokenizer(real_ids=True)
    real = VisionTokenIds.from_tokenizer(real_tok)
    assert (real.pad, real.im_start, real.im_end, real.vision_start, real.vision_end, real.image_pad, real.video_pad) == (
        151643, 151644, 151645, 151652, 151653, 151655, 151656)
    assert vocab_size_of(real_tok) == 151657


def test_video_expansion_and_targets(tok):
    ids = VisionTokenIds.from_tokenizer(tok)
    messages = CONVERSATIONS[2]
    enc = encode_chat(tok, messages, image_grid_thw=[[1, 4, 6], [1, 2, 2]], video_grid_thw=[[3, 4, 4]])
    n_img = int((enc.input_ids == ids.image_pad).sum())
    n_vid = int((enc.input_ids == ids.video_pad).sum())
    assert (n_img, n_vid) == (6 + 1, 12)
    # targets are exactly the assistant replies with their <|im_end|>
    targets = enc.input_ids[enc.target_mask]
    assert tok.decode(targets) == "a1<|im_end|>a2 ünï<|im_end|>"
    # the loss runs over contiguous spans: 2 replies -> 2 runs of True
    runs = int((enc.target_mask[1:] & ~enc.target_mask[:-1]).sum())
    assert runs == 2
    # each pad was replaced in place: removing expansions gives the plain tokenisation
    plain = tok(enc.text, add_special_tokens=False)["input_ids"]
    assert len(enc) == len(plain) + (6 - 1) + (1 - 1) + (12 - 1)


def test_image_expansion_matches_hf_processor(tok):
    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        """The video processor needs torchvision; images alone exercise the same expansion rule."""

        def check_argument_for_proper_class(self, name, arg):
            return None if name == "video_processor" else super().check_argument_for_proper_class(name, arg)

    proc = ImageOnlyProcessor(image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64),
                              tokenizer=tok, video_processor=None, chat_template=tok.chat_template)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (100, 140, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8))]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}, {"type": "image"}]},
                {"role": "assistant", "content": "ok"}]
    out = proc(text=[tok.apply_chat_template(messages, tokenize=False)], images=images, return_tensors="pt")
    enc = encode_chat(tok, messages, image_grid_thw=out["image_grid_thw"])
    assert out["image_grid_thw"].tolist() == [[1, 8, 10], [1, 4, 4]]
    assert torch.equal(enc.input_ids, out["input_ids"][0])


def test_grpo_prompt_and_completion(tok):
    ids = VisionTokenIds.from_tokenizer(tok)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}]
    prompt = encode_prompt(tok, messages, video_grid_thw=[[2, 2, 2]])
    assert prompt.text.endswith("<|im_start|>assistant\n")
    assert not prompt.target_mask.any()
    completion = tok("<answer>a</answer>", add_special_tokens=False)["input_ids"] + [ids.im_end]
    seq = append_completion(prompt, completion)
    assert seq.input_ids[: len(prompt)].tolist() == prompt.input_ids.tolist()
    assert seq.target_mask.tolist() == [False] * len(prompt) + [True] * len(completion)
    with pytest.raises(TemplateError, match="must not end with an assistant"):
        encode_prompt(tok, CONVERSATIONS[1], video_grid_thw=[[2, 2, 2]])


@pytest.mark.parametrize("kwargs,msg", [
    (dict(video_grid_thw=None), "more video items"),
    (dict(video_grid_thw=[[2, 2, 2], [2, 2, 2]]), "has 2 rows but the conversation has 1"),
    (dict(video_grid_thw=[[1, 1, 2]]), "not divisible"),
])
def test_grid_mismatch_errors(tok, kwargs, msg):
    with pytest.raises(TemplateError, match=msg):
        encode_chat(tok, CONVERSATIONS[1], **kwargs)


def test_bad_role(tok):
    with pytest.raises(TemplateError, match="role must be"):
        render_chat([{"role": "gpt", "content": "x"}])
