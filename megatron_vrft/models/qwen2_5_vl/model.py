"""``Qwen25VLModel``: Qwen2.5-VL on Megatron-Core, one pipeline stage of it per rank.

- First PP stage: the ViT (``vision_model``, see ``vision.py``) and the token embedding. Image and
  video embeddings replace the ``<|image_pad|>`` / ``<|video_pad|>`` token embeddings (masked
  scatter in batch-major order, as HF does) before the first decoder layer; with sequence
  parallelism the merged embeddings are scattered only after that merge.
- All stages: the language model is an mcore ``GPTModel`` with mRoPE. RoPE is computed on every
  stage from ``position_ids [3, B, S]``, so every stage needs them (``rope_index.get_rope_index``
  computes them per sample, before packing).
- Last stage: logits over the TP-padded vocabulary with the padding masked out, or the per-token
  loss when ``labels`` are given.
- Media reuse (GRPO): the ViT sees each distinct image/video once. ``image_index`` / ``video_index``
  map every image / video of the batch (in token order) to one of the distinct media given, so the
  G completions of a prompt share one vision pass; ``encode_vision`` returns the embeddings of
  distinct media (``VisionEmbeddings``), which a forward can take instead of pixels (a frozen ViT's
  outputs computed once per step serve the old-logprob, reference and update passes).
  ``vision_calls`` counts ViT forward calls.
Under PP the module follows mcore's contract for ``get_forward_backward_func`` (``set_input_tensor``,
``config``, ``model_type``, the tied-embedding accessors used by ``finalize_model_grads``).

Parameter names and their HF sources are ``weights.PARAMS`` (described in docs/checkpoints.md,
"One weight map").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.enums import ModelType
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.module import MegatronModule

from megatron_vrft.models.attention import SDPACoreAttention
from megatron_vrft.models.qwen2_5_vl.config import Qwen25VLMcoreConfig, mcore_configs
from megatron_vrft.models.qwen2_5_vl.vision import Qwen25VisionModel

__all__ = ["Qwen25VLModel", "VisionEmbeddings", "MASKED_LOGIT"]

# Logit given to the vocabulary padding rows: exp() underflows to exactly 0 in fp32/bf16, so the
# padding never takes probability mass, while staying finite (p * log p stays 0, never NaN, and a
# temperature division cannot overflow it to -inf).
MASKED_LOGIT = -1.0e4


@dataclass
class VisionEmbeddings:
    """ViT outputs of distinct media: one ``[tokens, H]`` tensor per image and per video, in the
    order they were encoded. ``projected=False``: the merger's input (``[tokens, hidden·merge²]``,
    ViT blocks frozen, merger trained), projected by the forward that uses them."""

    images: list[torch.Tensor] = field(default_factory=list)
    videos: list[torch.Tensor] = field(default_factory=list)
    projected: bool = True

    def detach(self) -> "VisionEmbeddings":
        return VisionEmbeddings([t.detach() for t in self.images], [t.detach() for t in self.videos], self.projected)


class Qwen25VLModel(MegatronModule):
    """This rank's PP stage of Qwen2.5-VL (ViT + merger on stage 0, GPTModel(mRoPE) everywhere).

    Build it under an initialised mcore ``parallel_state`` (``runtime.init_distributed``).

    Args:
        hf_config: transformers ``Qwen2_5_VLConfig``.
        first_stage_layers: LLM layers on PP stage 0 (fewer, to balance the ViT); None = even split.
        params_dtype: parameter dtype (fp32 for parity tests, bf16 for training).
        sequence_parallel, variable_seq_lengths, perform_initialization, **language_overrides:
            see ``config.mcore_configs``.

    Attributes: ``hf_config`` (what ``live.load_into_model`` / ``live.export_hf_state`` take),
    ``mcore_config`` (the built ``Qwen25VLMcoreConfig``), ``vision_model`` (None off stage 0),
    ``language_model`` (the ``GPTModel``), ``pre_process`` / ``post_process`` (first / last stage),
    ``vision_calls`` (ViT forward calls so far; benchmarks read it).
    """

    def __init__(
        self,
        hf_config,
        *,
        first_stage_layers: Optional[int] = None,
        params_dtype: torch.dtype = torch.float32,
        sequence_parallel: bool = False,
        variable_seq_lengths: bool = False,
        perform_initialization: bool = True,
        **language_overrides,
    ):
        cfg: Qwen25VLMcoreConfig = mcore_configs(
            hf_config,
            first_stage_layers=first_stage_layers,
            params_dtype=params_dtype,
            sequence_parallel=sequence_parallel,
            variable_seq_lengths=variable_seq_lengths,
            perform_initialization=perform_initialization,
            **language_overrides,
        )
        super().__init__(config=cfg.language)
        self.mcore_config = cfg
        self.hf_config = hf_config
        self.model_type = ModelType.encoder_or_decoder
        self.pre_process = ps.is_pipeline_first_stage()
        self.post_process = ps.is_pipeline_last_stage()
        self.share_embeddings_and_output_weights = cfg.tie_word_embeddings
        self.vision_model = (
            Qwen25VisionModel(cfg.vision, cfg.projection, cfg.vision_spec) if self.pre_process else None
        )
        self.vision_calls = 0
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
        spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
        self.language_model = GPTModel(
            cfg.language,
            spec,
            vocab_size=cfg.padded_vocab_size,
            max_sequence_length=cfg.max_sequence_length,
            pre_process=self.pre_process,
            post_process=self.post_process,
            parallel_output=True,
            share_embeddings_and_output_weights=cfg.tie_word_embeddings,
            position_embedding_type="mrope",
            rotary_base=cfg.rotary_base,
            # Scattering to sequence-parallel ranks must wait until the media embeddings are merged.
            scatter_embedding_sequence_parallel=False,
        )

    # ---- mcore pipeline / DDP contract -------------------------------------------------------
    def set_input_tensor(self, input_tensor) -> None:
        """Hidden states received from the previous PP stage (called by mcore's schedules)."""
        self.language_model.set_input_tensor(input_tensor)

    def shared_embedding_or_output_weight(self) -> Optional[torch.Tensor]:
        """The tied word-embedding / output weight of this stage (``finalize_model_grads`` all-reduces
        its gradient between the first and the last stage)."""
        return self.language_model.shared_embedding_or_output_weight()

    # ---- forward -------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        pixel_values: Optional[torch.Tensor] = None,
        image_grid_thw: Optional[torch.Tensor] = None,
        pixel_values_videos: Optional[torch.Tensor] = None,
        video_grid_thw: Optional[torch.Tensor] = None,
        packed_seq_params: Optional[PackedSeqParams] = None,
        runtime_gather_output: bool = False,
        image_index: Optional[torch.Tensor] = None,
        video_index: Optional[torch.Tensor] = None,
        vision_embeddings: Optional[VisionEmbeddings] = None,
    ) -> torch.Tensor:
        """One PP stage of the forward pass.

        Args:
            input_ids: ``[B, S]`` token ids (THD packing: ``[1, T]`` with ``packed_seq_params``);
                read on the first stage only (later stages may pass the same tensor or None).
            position_ids: ``[3, B, S]`` mRoPE ids (``rope_index.get_rope_index``); every stage.
            attention_mask: optional bool ``[B, 1, S, S]``, True = masked (mcore convention); None =
                causal. Packed sequences use ``packed_seq_params`` instead.
            labels: ``[B, S]`` target ids aligned with the logits (already shifted); negative =
                ignored (loss 0 there).
            pixel_values / pixel_values_videos: ``[Σ t·h·w, C·Tp·P·P]`` patches, with
                ``image_grid_thw`` / ``video_grid_thw`` ``[n, 3]``; first stage only.
            runtime_gather_output: gather the logits over TP (and slice off the vocab padding).
            image_index / video_index: ``[n]`` int64, for each image / video of the batch in token
                order, which of the given distinct media it is (None = each given medium once, in order).
            vision_embeddings: distinct media already encoded (``encode_vision``), instead of pixels.
        Returns:
            non-last stage: hidden states ``[S, B, H]`` for the next stage;
            last stage, no labels: logits ``[B, S, V_padded / TP]`` (padding = ``MASKED_LOGIT``), or
            ``[B, S, V]`` when gathered; with labels: per-token loss ``[B, S]`` float32.
        """
        decoder_input = None
        if self.pre_process:
            if vision_embeddings is not None and (pixel_values is not None or pixel_values_videos is not None):
                raise ValueError("give either pixel values or vision_embeddings, not both")
            if vision_embeddings is None:
                vision_embeddings = self.encode_vision(pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
            decoder_input = self._embed(input_ids, vision_embeddings, image_index, video_index)
        out = self.language_model(
            input_ids=None,
            position_ids=position_ids,
            attention_mask=attention_mask,
            decoder_input=decoder_input,
            packed_seq_params=packed_seq_params,
            runtime_gather_output=runtime_gather_output and labels is None,
        )
        if not self.post_process:
            return out
        gathered = runtime_gather_output and labels is None
        logits = self._mask_vocab_padding(out, gathered)
        if labels is None:
            return logits[..., : self.mcore_config.vocab_size] if gathered else logits
        ignore = labels < 0
        loss = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels.masked_fill(ignore, 0))
        return loss.masked_fill(ignore, 0.0)

    def encode_vision(
        self,
        pixel_values: Optional[torch.Tensor] = None,
        image_grid_thw: Optional[torch.Tensor] = None,
        pixel_values_videos: Optional[torch.Tensor] = None,
        video_grid_thw: Optional[torch.Tensor] = None,
        *,
        project: bool = True,
    ) -> VisionEmbeddings:
        """One ViT call over the given images and videos (attention never crosses a frame or a
        window, so batching them changes nothing); the result split per image and per video."""
        media = [("image", pixel_values, image_grid_thw), ("video", pixel_values_videos, video_grid_thw)]
        for kind, pixels, grid in media:
            if (pixels is None) != (grid is None):
                raise ValueError(f"{kind}: pixel values and grid_thw must be given together")
        present = [(p, torch.as_tensor(g).reshape(-1, 3)) for _, p, g in media if p is not None]
        out = VisionEmbeddings(projected=project)
        if not present:
            return out
        if self.vision_model is None:
            raise ValueError("the vision tower lives on the first pipeline stage only")
        self.vision_calls += 1
        feats = self.vision_model(torch.cat([p for p, _ in present]), torch.cat([g for _, g in present]), project=project)
        parts = list(feats.split([int(n) // self.vision_model.merge_unit for _, g in present for n in g.prod(-1)]))
        n_images = len(present[0][1]) if pixel_values is not None else 0
        out.images, out.videos = parts[:n_images], parts[n_images:]
        return out

    def _embed(self, input_ids, vision: VisionEmbeddings, image_index, video_index) -> torch.Tensor:
        """Token embeddings with the ViT outputs at the media pad tokens: ``[S, B, H]``."""
        cfg = self.mcore_config
        emb = self.language_model.embedding(input_ids=input_ids, position_ids=None)  # [S, B, H]
        media = []
        for token_id, kind, distinct, index in (
            (cfg.image_token_id, "image", vision.images, image_index),
            (cfg.video_token_id, "video", vision.videos, video_index),
        ):
            if index is not None:
                index = torch.as_tensor(index).reshape(-1).tolist()
                if any(not 0 <= i < len(distinct) for i in index):
                    raise ValueError(f"{kind}_index {index} refers past the {len(distinct)} {kind}(s) given")
            chosen = [distinct[i] for i in index] if index is not None else distinct
            if not chosen:
                if bool((input_ids == token_id).any()):
                    raise ValueError(f"input_ids contain {kind} pad tokens (id {token_id}) but no {kind} pixels were given")
                continue
            media.append((token_id, kind, torch.cat(chosen)))
        if media and not vision.projected:
            # The merger works row by row: project the rows of the batch in one call.
            sizes = [part.shape[0] for *_, part in media]
            projected = self.vision_model.projection(torch.cat([part for *_, part in media])).split(sizes)
            media = [(t, k, p) for (t, k, _), p in zip(media, projected)]
        if media:
            # Merge in [B, S, H] order: HF's masked_scatter fills pad tokens batch-major.
            emb = emb.transpose(0, 1)
            for token_id, kind, part in media:
                mask = input_ids == token_id
                n_tokens = int(mask.sum())
                if n_tokens != part.shape[0]:
                    raise ValueError(
                        f"input_ids hold {n_tokens} {kind} pad tokens (id {token_id}) but the {kind} grids "
                        f"give {part.shape[0]} embeddings"
                    )
                emb = emb.masked_scatter(mask.unsqueeze(-1), part.to(emb.dtype))
            emb = emb.transpose(0, 1).contiguous()
        if self.config.sequence_parallel:
            emb = tensor_parallel.scatter_to_sequence_parallel_region(emb)
        return emb

    def _mask_vocab_padding(self, logits: torch.Tensor, gathered: bool) -> torch.Tensor:
        """Sets the logits of the TP vocabulary padding (ids >= vocab_size) to ``MASKED_LOGIT``."""
        cfg = self.mcore_config
        if cfg.padded_vocab_size == cfg.vocab_size:
            return logits
        local = logits.shape[-1]
        start = 0 if gathered else ps.get_tensor_model_parallel_rank() * local
        first_pad = cfg.vocab_size - start
        if first_pad >= local:
            return logits
        ids = torch.arange(local, device=logits.device)
        return logits.masked_fill(ids >= first_pad, MASKED_LOGIT)
