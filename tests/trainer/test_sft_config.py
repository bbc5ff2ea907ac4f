"""The SFT config: unimplemented values are refused at load with one line, and unset data.video keys
leave the dataset format's own sampling defaults in place (Video-R2 SFT 1 fps / 128 frames,
Open-R1-Video 16 frames), while set ones override them."""

import pytest

from megatron_vrft.config import ConfigError, load_config
from megatron_vrft.data import load_samples
from megatron_vrft.trainer.setup import media_options

BASE = ["model.hf_path=/m", "data.train_path=/d.json"]


@pytest.mark.parametrize("override, key", [
    ("parallel.cp=2", "parallel.cp"),
    ("model.attention_backend=te", "model.attention_backend"),
    ("parallel.sequence_parallel=true", "parallel.sequence_parallel"),
])
def test_unimplemented_values_are_refused_in_one_line(override, key):
    overrides = BASE + [override] + (["parallel.tp=2", "parallel.world_size=2"] if "sequence" in override else [])
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_global_batch_must_split_over_data_parallel_ranks():
    with pytest.raises(ConfigError, match="data.global_batch_size"):
        load_config(None, BASE + ["parallel.world_size=4", "data.global_batch_size=6"])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from megatron_vrft.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("video_defaults")
    make_synthetic(root, ("video_r2", "open_r1_video"), 2)
    return root


@pytest.mark.parametrize("fmt, file, mode, want", [
    ("video_r2", "video_r2/sft.json", "sft", {"fps": 1.0, "max_frames": 128, "max_pixels": 360 * 420}),
    ("open_r1_video", "open_r1_video/grpo.jsonl", "grpo", {"nframes": 16, "max_pixels": 196 * 28 * 28}),
])
def test_unset_video_keys_keep_the_format_defaults(synthetic, fmt, file, mode, want):
    video, image = media_options(load_config(None, BASE).data.video)
    assert video == {} and image == {}
    samples, _ = load_samples(synthetic / file, fmt, synthetic / "videos", mode=mode, video_options=video)
    assert samples[0].media[0].options == want


def test_set_video_keys_override_the_format_defaults(synthetic):
    video, _ = media_options(load_config(None, BASE + ["data.video.nframes=8"]).data.video)
    samples, _ = load_samples(synthetic / "video_r2/sft.json", "video_r2", synthetic / "videos", video_options=video)
    assert samples[0].media[0].options == {"nframes": 8, "max_frames": 128, "max_pixels": 360 * 420}
