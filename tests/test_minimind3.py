"""minimind-3 (the current upstream generation) beside MiniMind2 in one model file.

Presets and parameter counts, upstream's config.json field names, upstream's state-dict keys (strict loads),
the Qwen3 / Qwen3-MoE math (logits equal transformers' classes with the same weights), the Switch aux loss,
decoding with a KV cache, and the weight-file error that names the preset a file needs.
"""
import json
import math
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import spread_weights_  # noqa: E402
from model.checkpoint import (WeightLoadError, describe_state, load_weights, preset_for_state,  # noqa: E402
                              state_shapes, weight_name)
from model.config_flags import ModelConfigError, model_config_from_args  # noqa: E402
from model.errors import UserError  # noqa: E402
from model.generation import generate  # noqa: E402
from model.model_minimind import PRESETS, MiniMindConfig, MiniMindForCausalLM  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "data" / "reference" / "minimind3_config"
TINY3 = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def tiny3(use_moe=False, seed=0, **kw):
    """A random tiny minimind-3 in eval mode. Norm weights are randomised (a forgotten QK-norm or a norm applied
    after RoPE would then change the logits) and weights scaled so logits are O(1) and greedy decoding varies."""
    torch.manual_seed(seed)
    cfg = MiniMindConfig.from_preset("minimind3-moe" if use_moe else "minimind3", **{**TINY3, **kw})
    return spread_weights_(MiniMindForCausalLM(cfg), 0.1)


def greedy_no_cache(model, ids, n):
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


# ---------------------------------------------------------------------------------------------------- presets
def test_minimind3_preset_shape():
    c = MiniMindConfig.from_preset("minimind3")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == \
        (768, 8, 8, 4, 96)
    assert c.qk_norm and c.rms_norm_eps == 1e-6 and c.intermediate_size == 2432 == 64 * math.ceil(768 * math.pi / 64)
    assert not c.use_moe and c.tie_word_embeddings
    m = MiniMindConfig.from_preset("minimind3-moe")
    assert m.use_moe and (m.n_routed_experts, m.num_experts_per_tok, m.n_shared_experts) == (4, 1, 0)
    assert m.moe_intermediate_size == 2432 and m.aux_loss_type == "switch" and m.aux_loss_alpha == 5e-4
    assert m.norm_topk_prob
    assert weight_name("full_sft", c) == "full_sft_768" and weight_name("full_sft", m) == "full_sft_768_moe"


def test_active_parameters_of_minimind3_moe():
    """198.4M in all, about 64M per token: three of the four experts of every layer sit idle."""
    c = MiniMindConfig.from_preset("minimind3-moe")
    with torch.device("meta"):
        model = MiniMindForCausalLM(c)
    total = sum(p.numel() for p in model.parameters())
    per_expert = sum(p.numel() for p in model.model.layers[0].mlp.experts[0].parameters())
    active = total - c.num_hidden_layers * (c.n_routed_experts - c.num_experts_per_tok) * per_expert
    assert total == 198_416_640 and round(active / 1e6) == 64


def test_from_preset_overrides_and_rules():
    c = MiniMindConfig.from_preset("minimind3", hidden_size=512)  # the pi rule follows the new hidden size
    assert c.intermediate_size == 1664 == 64 * math.ceil(512 * math.pi / 64) and c.head_dim == 64 and c.qk_norm
    assert MiniMindConfig.from_preset("minimind3", hidden_size=640).intermediate_size == 2048
    assert MiniMindConfig.from_preset("minimind3", intermediate_size=1000).intermediate_size == 1000
    assert MiniMindConfig.from_preset("minimind3", head_dim=128).head_dim == 128  # explicit head_dim wins
    assert MiniMindConfig.from_preset("minimind2", num_hidden_layers=4).intermediate_size == 2048  # 8/3 rule
    assert MiniMindConfig.from_preset("minimind3", use_moe=True).to_dict() == \
        MiniMindConfig.from_preset("minimind3-moe").to_dict()
    with pytest.raises(ValueError, match="minimind3-moe"):
        MiniMindConfig.from_preset("minimind4")


def test_model_config_from_args():
    def args(**kw):
        base = dict(preset=None, hidden_size=None, num_hidden_layers=None, num_attention_heads=None,
                    num_key_value_heads=None, use_moe=None)
        return Namespace(**{**base, **kw})

    assert model_config_from_args(args()).to_dict() == MiniMindConfig().to_dict()
    c = model_config_from_args(args(preset="minimind3", num_hidden_layers=4, use_moe=1), inference_rope_scaling=True)
    assert c.qk_norm and c.use_moe and c.num_hidden_layers == 4 and c.inference_rope_scaling
    assert c.num_key_value_heads == 4 and c.n_shared_experts == 0
    assert model_config_from_args(args(hidden_size=768, num_hidden_layers=16)).to_dict() == \
        MiniMindConfig.from_preset("minimind2").to_dict()
    with pytest.raises(ModelConfigError, match="--hidden_size 100") as e:  # 100 is not divisible by 8 heads
        model_config_from_args(args(preset="minimind3", hidden_size=100))
    assert isinstance(e.value, UserError)


# ---------------------------------------------------------------------------------------------------- config.json
@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference configs not found at {REFERENCE}")
@pytest.mark.parametrize("file,preset", [("config.json", "minimind3"), ("config_moe.json", "minimind3-moe")])
def test_upstream_config_json_is_the_preset(tmp_path, file, preset):
    """Upstream's own config.json (its field names: num_experts, router_aux_loss_coef, ...) reads as the preset."""
    (tmp_path / "config.json").write_text((REFERENCE / file).read_text())
    loaded = MiniMindConfig.from_pretrained(str(tmp_path))
    expected = MiniMindConfig.from_preset(preset)
    fields = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
              "qk_norm", "intermediate_size", "moe_intermediate_size", "rms_norm_eps", "rope_theta", "use_moe",
              "n_routed_experts", "num_experts_per_tok", "n_shared_experts", "norm_topk_prob", "aux_loss_type",
              "aux_loss_alpha", "tie_word_embeddings", "vocab_size", "bos_token_id", "eos_token_id",
              "inference_rope_scaling", "max_position_embeddings", "hidden_act"]
    assert {f: getattr(loaded, f) for f in fields} == {f: getattr(expected, f) for f in fields}
    # Read access under upstream's names too.
    assert loaded.num_experts == 4 and loaded.router_aux_loss_coef == 5e-4
    assert state_shapes(loaded) == state_shapes(expected)
    # Saved again, it carries our own names (qk_norm & co.) and reads back the same.
    loaded.save_pretrained(str(tmp_path / "again"))
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert saved["qk_norm"] is True and saved["n_shared_experts"] == 0 and "scoring_func" not in saved
    again = MiniMindConfig.from_pretrained(str(tmp_path / "again"))
    assert {f: getattr(again, f) for f in fields} == {f: getattr(expected, f) for f in fields}


def test_upstream_names_and_legacy_fields():
    up = MiniMindConfig(num_experts=6, router_aux_loss_coef=1e-3, num_experts_per_tok=1, use_moe=True)
    assert (up.n_routed_experts, up.aux_loss_alpha, up.num_experts) == (6, 1e-3, 6)
    assert up.qk_norm and up.n_shared_experts == 0 and up.aux_loss_type == "switch"  # written by minimind-3 code
    ours = MiniMindConfig(router_aux_loss_coef=1e-3, qk_norm=False)  # our own config says what it is
    assert not ours.qk_norm and ours.n_shared_experts == 1 and ours.aux_loss_type == "seq"
    # MiniMind2's scoring_func: "softmax" is accepted (and not kept); anything else is refused.
    assert "scoring_func" not in MiniMindConfig(scoring_func="softmax").to_dict()
    with pytest.raises(ValueError, match="scoring_func"):
        MiniMindConfig(scoring_func="sigmoid")
    assert MiniMindConfig(seq_aux=False).aux_loss_type == "batch"
    with pytest.raises(ValueError, match="aux_loss_type"):
        MiniMindConfig(aux_loss_type="zloss")


# ---------------------------------------------------------------------------------------------------- keys
def upstream3_shapes(hidden, layers, heads, kv, head_dim, inter, moe, experts=4, vocab=6400):
    """Upstream minimind-3's state dict, written out by hand from its README (keys and shapes)."""
    s = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
         "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        s.update({p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
                  p + "self_attn.k_proj.weight": (kv * head_dim, hidden),
                  p + "self_attn.v_proj.weight": (kv * head_dim, hidden),
                  p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                  p + "self_attn.q_norm.weight": (head_dim,), p + "self_attn.k_norm.weight": (head_dim,),
                  p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)})
        mlps = [f"mlp.experts.{e}." for e in range(experts)] if moe else ["mlp."]
        for m in mlps:
            s.update({p + m + "gate_proj.weight": (inter, hidden), p + m + "up_proj.weight": (inter, hidden),
                      p + m + "down_proj.weight": (hidden, inter)})
        if moe:
            s[p + "mlp.gate.weight"] = (experts, hidden)
    return s


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_released_minimind3_keys_and_shapes(moe):
    """The full-size presets have exactly upstream's keys and shapes (on the meta device: no memory)."""
    ours = state_shapes(MiniMindConfig.from_preset("minimind3-moe" if moe else "minimind3"))
    assert ours == upstream3_shapes(768, 8, 8, 4, 96, 2432, moe)
    persistent_buffers = {k for k in ours if "freqs" in k or "rotary" in k}
    assert not persistent_buffers


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_upstream_style_file_loads_strict(tmp_path, moe):
    """A half-precision .pth with upstream's keys (tied lm_head stored too) loads with strict=True, and every
    tensor lands where upstream's model would use it."""
    head_dim, inter = 24, 96  # explicit head_dim != hidden / heads: upstream configs carry head_dim
    shapes = upstream3_shapes(64, 2, 4, 2, head_dim, inter, moe)
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g).half() for k, s in shapes.items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    path = tmp_path / f"full_sft_64{'_moe' if moe else ''}.pth"
    torch.save(state, path)
    cfg = MiniMindConfig.from_preset("minimind3-moe" if moe else "minimind3", **TINY3, head_dim=head_dim,
                                     intermediate_size=inter)
    model = load_weights(MiniMindForCausalLM(cfg), path)
    got = model.state_dict()
    assert set(got) == set(state) and all(torch.equal(got[k], state[k].float()) for k in state)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_is_read_from_the_shapes(preset):
    with torch.device("meta"):
        state = MiniMindForCausalLM(MiniMindConfig.from_preset(preset)).state_dict()
    assert preset_for_state(state) == (preset, {})
    assert describe_state(state) == f"this file is a {preset} model: pass --preset {preset}"


def test_wrong_preset_error_names_the_fitting_one(tmp_path):
    model = tiny3(use_moe=True)
    path = tmp_path / "full_sft_64_moe.pth"
    torch.save(model.state_dict(), path)
    wrong = MiniMindForCausalLM(MiniMindConfig(**TINY3, use_moe=True))  # a MiniMind2 MoE of the same size
    with pytest.raises(WeightLoadError) as e:
        load_weights(wrong, path, "--from_weight full_sft")
    msg = str(e.value).splitlines()[0]
    flags = "--hidden_size 64 --num_hidden_layers 2 --num_attention_heads 4 --num_key_value_heads 2"
    assert msg.startswith(f"--from_weight full_sft: {path} does not match the model")
    assert f"this file is a minimind3-moe model with {flags}: pass --preset minimind3-moe {flags}" in msg
    assert isinstance(e.value, UserError)
    # ... and the flags it names build a model that loads the file.
    ok = MiniMindConfig.from_preset("minimind3-moe", **TINY3)
    load_weights(MiniMindForCausalLM(ok), path)
    # A dense minimind-3 file read with MiniMind2 flags names minimind3.
    torch.save(tiny3().state_dict(), path)
    with pytest.raises(WeightLoadError, match="pass --preset minimind3 --hidden_size 64"):
        load_weights(MiniMindForCausalLM(MiniMindConfig(**TINY3)), path)


# ---------------------------------------------------------------------------------------------------- math
def qwen3_twin(model):
    """transformers' own Qwen3 / Qwen3-MoE with our weights (configs written out here, independently of the
    exporter; only the expert layout conversion of transformers 5 comes from scripts/convert_model.py)."""
    import transformers
    from scripts.convert_model import to_hf_state_dict
    c = model.config
    kw = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
              num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
              num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
              max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
              rope_theta=c.rope_theta, tie_word_embeddings=True, hidden_act="silu", attention_bias=False,
              use_sliding_window=False)
    if c.use_moe:
        hf = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
            num_experts=c.n_routed_experts, num_experts_per_tok=c.num_experts_per_tok,
            moe_intermediate_size=c.moe_intermediate_size, norm_topk_prob=c.norm_topk_prob,
            decoder_sparse_step=1, mlp_only_layers=[], **kw))
    else:
        hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**kw))
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), hf.state_dict().keys()), strict=True)
    return hf.eval()


@pytest.mark.parametrize("moe,top_k,head_dim", [(False, 1, None), (False, 1, 24), (True, 1, None), (True, 2, 24)],
                         ids=["dense", "dense-head_dim24", "moe-top1", "moe-top2-head_dim24"])
def test_logits_match_transformers_qwen3(moe, top_k, head_dim):
    extra = {"head_dim": head_dim} if head_dim else {}
    model = tiny3(use_moe=moe, num_experts_per_tok=top_k, **extra)
    hf = qwen3_twin(model)
    assert hf.model.layers[0].self_attn.head_dim == model.config.head_dim
    x = torch.randint(0, 6400, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x).logits, hf(x).logits
    assert ours.abs().mean() > 0.1
    assert (ours - theirs).abs().max().item() < 1e-5
    # The QK-norm matters: without it the logits move far beyond that tolerance.
    model.config.qk_norm = False
    for layer in model.model.layers:
        layer.self_attn.qk_norm = False
    with torch.no_grad():
        assert (model(x).logits - theirs).abs().max().item() > 1e-2


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_generate_with_cache_equals_greedy(moe):
    """transformers' generate() with its KV cache, and our engine (StaticKVCache, batched left padding), both equal
    greedy decoding without a cache."""
    model = tiny3(use_moe=moe)
    prompt = torch.randint(3, 6400, (1, 7), generator=torch.Generator().manual_seed(2))
    ref = greedy_no_cache(model, prompt, 12)
    assert len(set(ref[0, 7:].tolist())) > 3, "test model too degenerate to catch cache bugs"
    cached = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                            use_cache=True, eos_token_id=None)
    assert torch.equal(cached, ref)
    prompts = [prompt[0].tolist(), [5, 6, 7]]
    out = generate(model, prompts, max_new_tokens=8, temperature=0, eos_token_id=-1)
    for i, p in enumerate(prompts):
        assert out.responses[i].tolist() == greedy_no_cache(model, torch.tensor([p]), 8)[0, len(p):].tolist()


# ---------------------------------------------------------------------------------------------------- MoE
def test_switch_aux_loss_formula_and_router_gradient():
    model = tiny3(use_moe=True).train()
    cfg = model.config
    gate = model.model.layers[0].mlp.gate
    h = torch.randn(2, 16, 64)
    idx, w, aux = gate(h)
    assert idx.shape == (32, 1) and torch.equal(w, torch.ones_like(w))  # top-1, normalised: weight 1
    scores = torch.softmax(h.reshape(-1, 64) @ gate.weight.T, -1)
    frac = torch.bincount(idx[:, 0], minlength=4).float() / 32  # share of tokens per expert
    manual = 4 * (frac * scores.mean(0)).sum() * 5e-4
    assert torch.allclose(aux, manual, atol=1e-9)
    x = torch.randint(0, 6400, (2, 16))
    out = model(x, labels=x)
    per_layer = [layer.mlp.aux_loss for layer in model.model.layers]
    assert torch.allclose(out.aux_loss, sum(per_layer)) and out.aux_loss > 0
    (out.loss + out.aux_loss).backward()
    assert gate.weight.grad.abs().sum() > 0, "with top-1 the router learns from the aux loss"
    assert cfg.aux_loss_alpha == 5e-4
    model.eval()
    assert model(x).aux_loss.item() == 0.0
