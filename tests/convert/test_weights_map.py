"""The declarative weight map: hand-computed layouts, parity with the probe-proven mapping, exact
round trips at every TP/PP, resharding, and clear errors."""

import pytest
import torch

from megatron_vrft.models.qwen2_5_vl import weights as W
from megatron_vrft.testing.tiny_qwen import TINY_SHAPES, tiny_hf_model

LAYOUTS = [(1, 1), (1, 2), (2, 1), (2, 2)]


@pytest.fixture(scope="module", params=sorted(TINY_SHAPES))
def tiny(request):
    model = tiny_hf_model(seed=0, **TINY_SHAPES[request.param])
    state = {W.read_hf_key(k): v.detach().clone() for k, v in model.state_dict().items()}
    return model.config, state


def _param(mcore_suffix):
    (p,) = [p for p in W.PARAMS if p.mcore.endswith(mcore_suffix)]
    return p


def _dims(**kw):
    base = dict(layers=1, h=1, nh=4, ng=2, hd=1, ffn=4, vocab=5, tied=False, depth=1, vh=2, vnh=2, vffn=4,
                cin=3, tps=2, ps=14, vmerge=8, vout=1)
    return W.ModelDims(**{**base, **kw})


def _col(*vals):
    return torch.tensor(vals, dtype=torch.float32).view(-1, 1)


def test_read_hf_key_accepts_both_layouts():
    assert W.read_hf_key("model.visual.blocks.0.attn.qkv.weight") == "visual.blocks.0.attn.qkv.weight"
    assert W.read_hf_key("visual.merger.ln_q.weight") == "visual.merger.ln_q.weight"
    assert W.read_hf_key("model.language_model.layers.3.mlp.up_proj.weight") == "model.layers.3.mlp.up_proj.weight"
    assert W.read_hf_key("model.norm.weight") == "model.norm.weight"
    assert W.read_hf_key("lm_head.weight") == "lm_head.weight"
    with pytest.raises(W.MissingWeightError, match="transformer.h.0"):
        W.read_hf_key("transformer.h.0.attn.weight")


def test_llm_qkv_is_interleaved_per_query_group():
    d = _dims()  # 4 query heads, 2 groups, head_dim 1
    p = _param("language_model.decoder.layers.{i}.self_attention.linear_qkv.weight")
    q, k, v = _col(0, 1, 2, 3), _col(10, 11), _col(20, 21)
    assert W.split_param(p, [q, k, v], d, 0, 1).flatten().tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    assert W.split_param(p, [q, k, v], d, 1, 2).flatten().tolist() == [2, 3, 11, 21]
    # MQA at TP=2 (mcore 0.16 all-gathers): plain chunks of the single group's [q0..q3, k, v]
    d1 = _dims(ng=1)
    assert W.split_param(p, [q, _col(10), _col(20)], d1, 1, 2).flatten().tolist() == [3, 10, 20]


def test_vision_qkv_goes_per_head():
    d = _dims()  # 2 vision heads, head_dim 1: HF [q0 q1 k0 k1 v0 v1]
    p = _param("vision_model.decoder.layers.{i}.self_attention.linear_qkv.bias")
    assert W.split_param(p, [torch.arange(6.0)], d, 0, 1).tolist() == [0, 2, 4, 1, 3, 5]
    assert W.split_param(p, [torch.arange(6.0)], d, 1, 2).tolist() == [1, 3, 5]


def test_gate_up_is_fused_per_rank_and_merger_is_not():
    d = _dims()
    p = _param("language_model.decoder.layers.{i}.mlp.linear_fc1.weight")
    gate, up = _col(0, 1, 2, 3), _col(10, 11, 12, 13)
    assert W.split_param(p, [gate, up], d, 0, 2).flatten().tolist() == [0, 1, 10, 11]
    assert W.split_param(p, [gate, up], d, 1, 2).flatten().tolist() == [2, 3, 12, 13]
    merger = _param("vision_model.projection.encoder.linear_fc1.bias")
    assert merger.kind is W.Kind.COPY and merger.tp_axis == 0


def test_vocab_rows_are_zero_padded_per_rank():
    d = _dims(vocab=5)
    p = _param("language_model.embedding.word_embeddings.weight")
    emb = _col(1, 2, 3, 4, 5)
    assert W.padded_vocab_size(5, 2) == 6 and W.padded_vocab_size(6, 2) == 6
    assert W.split_param(p, [emb], d, 1, 2).flatten().tolist() == [4, 5, 0]
    merged = W.merge_param(p, [W.split_param(p, [emb], d, r, 2) for r in range(2)], d)
    assert merged[0].flatten().tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "n, pp, first, expected",
    [(36, 1, None, [36]), (36, 4, None, [9, 9, 9, 9]), (10, 3, None, [3, 3, 4]), (10, 3, 2, [2, 4, 4]),
     (11, 3, 2, [2, 4, 5]), (28, 2, 4, [4, 24]), (5, 1, 3, [5])],
)
def test_layer_split(n, pp, first, expected):
    assert W.layer_split(n, pp, first) == expected


def test_layer_split_errors():
    with pytest.raises(W.ParallelSizeError, match="num_hidden_layers=2 into pp=3"):
        W.layer_split(2, 3)
    with pytest.raises(W.ParallelSizeError, match="first_stage_layers=4"):
        W.layer_split(4, 2, 4)


def test_matches_probe_mapping_at_tp2(tiny):
    """Same shards as the hand-written mapping of shared/probes/{llm,vision}_parity.py (parity 1e-7)."""
    cfg, sd = tiny
    t, v = cfg.text_config, cfg.vision_config
    nh, ng, hd = t.num_attention_heads, t.num_key_value_heads, t.hidden_size // t.num_attention_heads
    for r in range(2):
        got = dict(W.hf_to_mcore(sd.__getitem__, cfg, tp_rank=r, tp_size=2, pp_rank=0, pp_size=1))
        p = "model.layers.1.self_attn."
        fused = torch.cat([sd[p + "q_proj.weight"].reshape(ng, nh // ng * hd, -1),
                           sd[p + "k_proj.weight"].reshape(ng, hd, -1),
                           sd[p + "v_proj.weight"].reshape(ng, hd, -1)], 1).reshape(-1, t.hidden_size)
        assert torch.equal(got["language_model.decoder.layers.1.self_attention.linear_qkv.weight"], fused.chunk(2)[r])
        vq = sd["visual.blocks.1.attn.qkv.weight"]
        per_head = vq.view(3, v.num_heads, v.hidden_size // v.num_heads, -1).transpose(0, 1).reshape(vq.shape)
        assert torch.equal(got["vision_model.decoder.layers.1.self_attention.linear_qkv.weight"], per_head.chunk(2)[r])
        g, u = sd["visual.blocks.0.mlp.gate_proj.bias"], sd["visual.blocks.0.mlp.up_proj.bias"]
        assert torch.equal(got["vision_model.decoder.layers.0.mlp.linear_fc1.bias"],
                           torch.cat([g.chunk(2)[r], u.chunk(2)[r]]))
        assert torch.equal(got["language_model.decoder.layers.0.self_attention.linear_proj.weight"],
                           sd["model.layers.0.self_attn.o_proj.weight"].chunk(2, 1)[r])
        assert torch.equal(got["vision_model.projection.encoder.linear_fc2.bias"], sd["visual.merger.mlp.2.bias"])


def _expected_shapes(cfg, tp, pp_rank, pp):
    """Hand-written shard shapes of one (TP, PP) rank, from the HF config alone (not the map): the
    layers of Qwen25VLModel's mcore spec, column-parallel weights split by rows, row-parallel by
    columns, norms / row-parallel biases / patch embedding whole, vocabulary padded to ceil(V / tp)
    rows per rank, LLM layers split evenly with the remainder on the last stage."""
    t, v = cfg.text_config, cfg.vision_config
    h, nh, ng, ffn = t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.intermediate_size
    hd, rows = h // nh, -(-t.vocab_size // tp)
    vh, vffn, vm = v.hidden_size, v.intermediate_size, v.hidden_size * v.spatial_merge_size**2
    n = t.num_hidden_layers
    split = {1: [n], 2: [n // 2, n - n // 2]}[pp]
    out = {}
    if pp_rank == 0:
        out["vision_model.patch_embed.proj.weight"] = (vh, 3, v.temporal_patch_size, v.patch_size, v.patch_size)
        for i in range(v.depth):
            b = f"vision_model.decoder.layers.{i}."
            out.update({
                b + "input_layernorm.weight": (vh,), b + "pre_mlp_layernorm.weight": (vh,),
                b + "self_attention.linear_qkv.weight": (3 * vh // tp, vh), b + "self_attention.linear_qkv.bias": (3 * vh // tp,),
                b + "self_attention.linear_proj.weight": (vh, vh // tp), b + "self_attention.linear_proj.bias": (vh,),
                b + "mlp.linear_fc1.weight": (2 * vffn // tp, vh), b + "mlp.linear_fc1.bias": (2 * vffn // tp,),
                b + "mlp.linear_fc2.weight": (vh, vffn // tp), b + "mlp.linear_fc2.bias": (vh,),
            })
        out.update({
            "vision_model.decoder.final_layernorm.weight": (vh,),
            "vision_model.projection.encoder.linear_fc1.weight": (vm // tp, vm),
            "vision_model.projection.encoder.linear_fc1.bias": (vm // tp,),
            "vision_model.projection.encoder.linear_fc2.weight": (v.out_hidden_size, vm // tp),
            "vision_model.projection.encoder.linear_fc2.bias": (v.out_hidden_size,),
            "language_model.embedding.word_embeddings.weight": (rows, h),
        })
    qkv = (nh + 2 * ng) * hd // tp
    for i in range(split[pp_rank]):
        b = f"language_model.decoder.layers.{i}."
        out.update({
            b + "input_layernorm.weight": (h,), b + "pre_mlp_layernorm.weight": (h,),
            b + "self_attention.linear_qkv.weight": (qkv, h), b + "self_attention.linear_qkv.bias": (qkv,),
            b + "self_attention.linear_proj.weight": (h, nh * hd // tp),
            b + "mlp.linear_fc1.weight": (2 * ffn // tp, h), b + "mlp.linear_fc2.weight": (h, ffn // tp),
        })
    if pp_rank == pp - 1:
        out["language_model.decoder.final_layernorm.weight"] = (h,)
        if not cfg.tie_word_embeddings or pp > 1:
            out["language_model.output_layer.weight"] = (rows, h)
    return out


def _shard_all(cfg, get, tp, pp, first=None):
    return {
        (tr, pr): dict(W.hf_to_mcore(get, cfg, tp_rank=tr, tp_size=tp, pp_rank=pr, pp_size=pp,
                                     first_stage_layers=first))
        for tr in range(tp) for pr in range(pp)
    }


@pytest.mark.parametrize("tp,pp", LAYOUTS)
def test_round_trip_is_bit_exact(tiny, tp, pp):
    cfg, sd = tiny
    shards = _shard_all(cfg, sd.__getitem__, tp, pp)
    for (tr, pr), got in shards.items():
        want = _expected_shapes(cfg, tp, pr, pp)
        assert {k: tuple(x.shape) for k, x in got.items()} == want
        assert W.mcore_shapes(cfg, tp_rank=tr, tp_size=tp, pp_rank=pr, pp_size=pp) == want
    stages = [{k for k in shards[(0, s)]} for s in range(pp)]
    assert any(k.startswith("vision_model.") for k in stages[0])
    assert not any(k.startswith("vision_model.") for s in stages[1:] for k in s)
    has_out = "language_model.output_layer.weight" in stages[-1]
    assert has_out == (not cfg.tie_word_embeddings or pp > 1)
    back = dict(W.mcore_to_hf(lambda t, p, n: shards[(t, p)][n], cfg, tp_size=tp, pp_size=pp))
    expected = set(sd) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
    assert set(back) == expected == set(W.hf_shapes(cfg))
    for name in expected:
        assert back[name].dtype == sd[name].dtype and torch.equal(back[name], sd[name]), name


def test_tied_output_layer_on_last_stage_copies_embedding(tiny):
    cfg, sd = tiny
    if not cfg.tie_word_embeddings:
        pytest.skip("untied shape")
    last = dict(W.hf_to_mcore(sd.__getitem__, cfg, tp_rank=0, tp_size=1, pp_rank=1, pp_size=2))
    assert torch.equal(last["language_model.output_layer.weight"], sd["model.embed_tokens.weight"])


@pytest.mark.parametrize("src, dst", [((2, 2), (1, 1)), ((1, 1), (2, 2)), ((2, 1), (1, 2))])
def test_reshard_through_hf_view_equals_direct_conversion(tiny, src, dst):
    cfg, sd = tiny
    saved = _shard_all(cfg, sd.__getitem__, *src)
    hf_view = W.McoreAsHF(lambda t, p, n: saved[(t, p)][n], cfg, tp_size=src[0], pp_size=src[1])
    resharded = _shard_all(cfg, hf_view, *dst)
    direct = _shard_all(cfg, sd.__getitem__, *dst)
    assert resharded.keys() == direct.keys()
    for rank in direct:
        assert resharded[rank].keys() == direct[rank].keys()
        for k in direct[rank]:
            assert torch.equal(resharded[rank][k], direct[rank][k]), (rank, k)


def test_uneven_first_stage_split(tiny):
    cfg, sd = tiny
    n = cfg.text_config.num_hidden_layers
    shards = _shard_all(cfg, sd.__getitem__, 1, 2, first=1)
    first = {k for k in shards[(0, 0)] if ".decoder.layers." in k and k.startswith("language_model")}
    assert {k.split(".")[3] for k in first} == {"0"}
    last_layers = {k.split(".")[3] for k in shards[(0, 1)] if ".decoder.layers." in k}
    assert last_layers == {str(i) for i in range(n - 1)}
    assert torch.equal(shards[(0, 1)]["language_model.decoder.layers.0.mlp.linear_fc2.weight"],
                       sd["model.layers.1.mlp.down_proj.weight"])


def test_errors_name_the_field_or_tensor(tiny):
    cfg, sd = tiny
    with pytest.raises(W.ParallelSizeError,
                       match=r"tensor-parallel size 3 does not divide text_config.num_attention_heads=4"):
        list(W.hf_to_mcore(sd.__getitem__, cfg, tp_rank=0, tp_size=3, pp_rank=0, pp_size=1))
    bad = dict(sd)
    bad["model.layers.0.mlp.up_proj.weight"] = torch.zeros(7, 64)
    with pytest.raises(W.WeightShapeError, match=r"model.layers.0.mlp.up_proj.weight has shape \[7, 64\], expected"):
        list(W.hf_to_mcore(bad.__getitem__, cfg, tp_rank=0, tp_size=1, pp_rank=0, pp_size=1))
    shards = _shard_all(cfg, sd.__getitem__, 2, 1)
    shards[(1, 0)]["language_model.decoder.final_layernorm.weight"] = torch.zeros(3)
    with pytest.raises(W.WeightShapeError, match=r"final_layernorm.weight \(tp_rank=1, pp_rank=0\) has shape \[3\]"):
        list(W.mcore_to_hf(lambda t, p, n: shards[(t, p)][n], cfg, tp_size=2, pp_size=1))
    with pytest.raises(W.UnsupportedConfigError, match="model_type=llama"):
        W.model_dims({"model_type": "llama"})
