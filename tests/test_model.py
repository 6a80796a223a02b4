"""Model correctness: sizes, MiniMind2 key compatibility, Llama parity, HF round trip, KV cache, YaRN, MoE.

minimind-3 (presets, upstream keys and config names, Qwen3 / Qwen3-MoE parity) is in test_minimind3.py."""
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.model_minimind import (MiniMindConfig, MiniMindForCausalLM, MOEFeedForward, StaticKVCache,  # noqa: E402
                                  precompute_freqs_cis, rope_inv_freq)
from model.generation import generate  # noqa: E402


def tiny_config(**kw):
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=512)
    base.update(kw)
    return MiniMindConfig(**base)


def tiny_model(seed=0, std=0.2, **kw):
    """A random tiny model. A larger init std than training uses makes greedy decoding non-degenerate
    (with std 0.02 a random model repeats one token, which would hide cache bugs)."""
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(tiny_config(initializer_range=std, **kw))
    return model.eval()


# ------------------------------------------------------------------------------------------------ sizes & keys
@pytest.mark.parametrize("hidden,layers,moe,expected", [
    (512, 8, False, 25.83), (768, 16, False, 104.03), (640, 8, True, 145.03)])
def test_parameter_counts(hidden, layers, moe, expected):
    with torch.device("meta"):  # no memory, no init time: only shapes matter here
        model = MiniMindForCausalLM(MiniMindConfig(hidden_size=hidden, num_hidden_layers=layers, use_moe=moe))
    n = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    assert round(n / 1e6, 2) == expected


@pytest.mark.parametrize("preset,expected", [
    ("minimind2-small", 25_829_888), ("minimind2", 104_030_976), ("minimind2-moe", 145_029_760),
    ("minimind3", 63_912_192), ("minimind3-moe", 198_416_640)])
def test_preset_parameter_counts(preset, expected):
    with torch.device("meta"):
        model = MiniMindForCausalLM(MiniMindConfig.from_preset(preset))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_default_config_is_minimind2_small():
    assert MiniMindConfig().to_dict() == MiniMindConfig.from_preset("minimind2-small").to_dict()
    c = MiniMindConfig()
    assert (c.qk_norm, c.n_shared_experts, c.aux_loss_type, c.head_dim, c.rms_norm_eps) == (False, 1, "seq", 64, 1e-5)


def expected_keys(layers, moe, experts=4, shared=1, qk_norm=False):
    keys = ["model.embed_tokens.weight"]
    for i in range(layers):
        p = f"model.layers.{i}."
        keys += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        if qk_norm:
            keys += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
        keys += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        if moe:
            for e in range(experts):
                keys += [p + f"mlp.experts.{e}.{x}_proj.weight" for x in ("gate", "down", "up")]
            keys.append(p + "mlp.gate.weight")
            for s in range(shared):
                keys += [p + f"mlp.shared_experts.{s}.{x}_proj.weight" for x in ("gate", "down", "up")]
        else:
            keys += [p + f"mlp.{x}_proj.weight" for x in ("gate", "down", "up")]
    return keys + ["model.norm.weight", "lm_head.weight"]


@pytest.mark.parametrize("preset,layers,moe,shared,qk_norm", [
    ("minimind2-small", 8, False, 1, False), ("minimind2", 16, False, 1, False), ("minimind2-moe", 8, True, 1, False),
    ("minimind3", 8, False, 0, True), ("minimind3-moe", 8, True, 0, True)])
def test_preset_state_dict_keys(preset, layers, moe, shared, qk_norm):
    with torch.device("meta"):
        model = MiniMindForCausalLM(MiniMindConfig.from_preset(preset))
    assert sorted(model.state_dict()) == sorted(expected_keys(layers, moe, shared=shared, qk_norm=qk_norm))


@pytest.mark.parametrize("moe", [False, True])
def test_state_dict_keys_are_minimind2(moe):
    with torch.device("meta"):
        model = MiniMindForCausalLM(MiniMindConfig(hidden_size=640 if moe else 512, use_moe=moe))
    assert sorted(model.state_dict().keys()) == sorted(expected_keys(8, moe))
    # RoPE tables are buffers but must never be persisted (MiniMind2 files have none).
    persistent = {n for n, _ in model.named_buffers()} & set(model.state_dict())
    assert not persistent


def test_minimind2_style_checkpoint_loads_strict(tmp_path):
    """A half-precision .pth with exactly MiniMind2's keys loads with strict=True."""
    src = tiny_model()
    path = tmp_path / "full_sft_64.pth"
    torch.save({k: v.half() for k, v in src.state_dict().items()}, path)
    dst = MiniMindForCausalLM(tiny_config())
    dst.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert dst.lm_head.weight.data_ptr() == dst.model.embed_tokens.weight.data_ptr(), "embeddings must stay tied"


def test_intermediate_size_rule():
    assert MiniMindConfig(hidden_size=512).intermediate_size == 1408
    assert MiniMindConfig(hidden_size=768).intermediate_size == 2048
    assert MiniMindConfig(hidden_size=640).intermediate_size == 1728


# ------------------------------------------------------------------------------------------------ parity
def test_logits_match_transformers_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    model = tiny_model()
    c = model.config
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=True, hidden_act="silu",
        attention_bias=False, mlp_bias=False)).eval()
    llama.load_state_dict(model.state_dict(), strict=True)
    x = torch.randint(0, c.vocab_size, (2, 37))
    with torch.no_grad():
        diff = (model(x).logits - llama(x).logits).abs().max().item()
    assert diff < 1e-5, diff


def test_sdpa_matches_manual_attention():
    model = tiny_model()
    manual = tiny_model(flash_attn=False)
    manual.load_state_dict(model.state_dict())
    x = torch.randint(0, 6400, (2, 19))
    with torch.no_grad():
        assert torch.allclose(model(x).logits, manual(x).logits, atol=1e-5)


def test_left_padding_does_not_change_real_positions():
    model = tiny_model()
    ids = torch.randint(3, 6400, (1, 12))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 12, dtype=torch.long)], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(ids).logits
        out = model(padded, attention_mask=mask, position_ids=pos).logits[:, 5:]
    assert torch.allclose(ref, out, atol=1e-5)


def test_loss_ignores_minus_100_and_matches_manual():
    model = tiny_model()
    ids = torch.randint(0, 6400, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 6400)
    manual = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, manual)



@pytest.mark.parametrize("use_moe", [False, True])
def test_labelled_only_loss_and_gradients_equal_the_full_head(use_moe):
    """SFT's labelled_only=True projects only the labelled positions: the same loss and the same gradients
    (rows with no label at all included), with no logits returned."""
    model = tiny_model(use_moe=use_moe).train()
    ids = torch.randint(0, 6400, (3, 12))
    labels = ids.clone()
    labels[:, :7] = -100
    labels[1] = -100  # a row whose assistant turn was truncated away
    grads, losses = [], []
    for labelled_only in (False, True):
        model.zero_grad()
        out = model(ids, labels=labels, labelled_only=labelled_only)
        (out.loss + out.aux_loss).backward()
        losses.append(out.loss.detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        assert (out.logits is None) == labelled_only
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
    none = torch.full_like(labels, -100)  # nothing to learn: 0, not NaN
    assert model(ids, labels=none, labelled_only=True).loss.item() == 0.0

# ------------------------------------------------------------------------------------------------ HF round trip
def test_save_pretrained_round_trip_with_remote_code(tmp_path):
    from transformers import AutoModelForCausalLM
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model_minimind.py").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    # transformers 5 builds the model on the meta device: the RoPE tables must have been recomputed.
    cos, sin = precompute_freqs_cis(model.config.head_dim, model.config.max_position_embeddings,
                                    model.config.rope_theta)
    assert torch.equal(loaded.model.rotary_emb.freqs_cos, cos)
    assert torch.equal(loaded.model.rotary_emb.freqs_sin, sin)
    x = torch.randint(0, 6400, (2, 23))
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


# ------------------------------------------------------------------------------------------------ KV cache
def greedy_no_cache(model, ids, n):
    for _ in range(n):
        with torch.no_grad():
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids


@pytest.mark.parametrize("use_moe", [False, True], ids=["dense", "moe"])
def test_generate_with_cache_equals_greedy_without_cache(use_moe):
    """transformers' generate() (GenerationMixin) with its KV cache == greedy decoding without a cache, whatever
    the installed transformers calls the cache keyword (`past_key_values` before 5.24, `cache` after)."""
    model = tiny_model(use_moe=use_moe)
    prompt = torch.randint(3, 6400, (1, 7))
    ref = greedy_no_cache(model, prompt, 12)
    assert len(set(ref[0, 7:].tolist())) > 3, "test model too degenerate to catch cache bugs"
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, eos_token_id=None)
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False, eos_token_id=None)
    assert torch.equal(cached, ref) and torch.equal(uncached, ref)


def test_generate_really_uses_the_cache():
    """With a cache, every decoding forward after the prefill gets exactly one new token."""
    model = tiny_model()
    seen = []
    orig = model.model.forward

    def spy(*a, **kw):
        ids = kw.get("input_ids")
        past = kw.get("cache")
        seen.append((ids.shape[1], past.get_seq_length() if past is not None else None))
        return orig(*a, **kw)

    model.model.forward = spy
    model.generate(torch.randint(3, 6400, (1, 6)), max_new_tokens=5, do_sample=False, eos_token_id=None)
    assert seen[0] == (6, 0)
    assert seen[1:] == [(1, 6 + i) for i in range(4)]


def test_static_cache_incremental_logits_match_full_forward():
    model = tiny_model()
    ids = torch.randint(3, 6400, (2, 15))
    with torch.no_grad():
        full = model(ids).logits
        cache = StaticKVCache(model.config, 2, 15)
        parts = [model(ids[:, :9], cache=cache, use_cache=True).logits]
        parts.append(model(ids[:, 9:12], cache=cache, use_cache=True).logits)  # chunked prefill
        for t in range(12, 15):
            parts.append(model(ids[:, t:t + 1], cache=cache, use_cache=True).logits)
    assert torch.allclose(full, torch.cat(parts, 1), atol=1e-5)


def test_batched_left_padded_generation_equals_one_by_one():
    model = tiny_model()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    batch = generate(model, prompts, max_new_tokens=10, temperature=0, eos_token_id=-1)
    for i, p in enumerate(prompts):
        single = generate(model, [p], max_new_tokens=10, temperature=0, eos_token_id=-1)
        ref = greedy_no_cache(model, torch.tensor([p]), 10)[0, len(p):]
        assert batch.responses[i].tolist() == single.responses[0].tolist() == ref.tolist()


def test_generation_stops_at_eos_and_masks_after():
    model = tiny_model()
    prompt = [5, 6, 7]
    ref = generate(model, [prompt], max_new_tokens=8, temperature=0, eos_token_id=-1).responses[0].tolist()
    eos = ref[2]  # pretend the third generated token is EOS
    if eos in ref[:2]:
        pytest.skip("degenerate sample")
    out = generate(model, [prompt, prompt], max_new_tokens=8, temperature=0, eos_token_id=eos, pad_token_id=0)
    assert out.responses.shape[1] == 3
    assert out.response_mask.tolist() == [[1, 1, 1], [1, 1, 1]]


# ------------------------------------------------------------------------------------------------ YaRN
def test_yarn_frequencies_follow_the_formula():
    dim, base = 64, 1e6
    sc = {"factor": 16, "original_max_position_embeddings": 2048, "beta_fast": 32, "beta_slow": 1,
          "attention_factor": 1.0}
    plain, _ = rope_inv_freq(dim, base)
    yarn, attn = rope_inv_freq(dim, base, sc, end=32768)
    # Independent formula: a dimension pair i rotates r_i = L * f_i / (2 pi) times over the original context
    # L. r > beta_fast: keep; r < beta_slow: divide by the factor; between: linear ramp in i.
    low = max(math.floor(dim * math.log(2048 / (32 * 2 * math.pi)) / (2 * math.log(base))), 0)
    high = min(math.ceil(dim * math.log(2048 / (1 * 2 * math.pi)) / (2 * math.log(base))), dim // 2 - 1)
    for i in range(dim // 2):
        f = base ** (-2 * i / dim)
        gamma = min(max((i - low) / (high - low), 0.0), 1.0)
        assert yarn[i].item() == pytest.approx(f * ((1 - gamma) + gamma / 16), rel=1e-5)
        rotations = 2048 * f / (2 * math.pi)
        if rotations > 32:
            assert yarn[i].item() == pytest.approx(plain[i].item(), rel=1e-6)  # high frequencies untouched
        if rotations < 1:
            assert yarn[i].item() == pytest.approx(plain[i].item() / 16, rel=1e-5)  # low ones interpolated
    assert attn == 1.0
    assert (yarn < plain).any()


def test_yarn_changes_long_context_behaviour_only():
    torch.manual_seed(0)
    plain = tiny_model(max_position_embeddings=4096)
    yarn = tiny_model(max_position_embeddings=4096, inference_rope_scaling=True)
    yarn.load_state_dict(plain.state_dict())
    assert yarn.config.yarn_scaling["factor"] == 16
    ids = torch.randint(3, 6400, (1, 3000))
    with torch.no_grad():
        a, b = plain(ids).logits, yarn(ids).logits
    assert (a[0, -1] - b[0, -1]).abs().max() > 1e-3, "YaRN must change long-context logits"
    # Its tables differ from plain RoPE at far positions by construction:
    assert not torch.allclose(plain.model.rotary_emb.freqs_cos[3000], yarn.model.rotary_emb.freqs_cos[3000])


def test_yarn_config_round_trip(tmp_path):
    cfg = MiniMindConfig(inference_rope_scaling=True)
    cfg.save_pretrained(tmp_path)
    back = MiniMindConfig.from_pretrained(tmp_path)
    assert back.inference_rope_scaling and back.yarn_scaling == cfg.yarn_scaling
    # An upstream-style config carrying the dict under `rope_scaling` switches YaRN on too.
    assert MiniMindConfig(rope_scaling={"type": "yarn", "factor": 16}).inference_rope_scaling


# ------------------------------------------------------------------------------------------------ MoE
def dispatch_loop(moe, x, topk_idx, topk_weight):
    """The straightforward routing, token by token and slot by slot."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for slot in range(topk_idx.shape[1]):
            out[t] += moe.experts[int(topk_idx[t, slot])](x[t:t + 1])[0] * topk_weight[t, slot]
    return out


@pytest.mark.parametrize("experts,top_k", [(4, 2), (4, 1), (6, 3)])
def test_moe_vectorised_dispatch_equals_loop(experts, top_k):
    torch.manual_seed(0)
    moe = MOEFeedForward(tiny_config(use_moe=True, n_routed_experts=experts, num_experts_per_tok=top_k))
    x = torch.randn(37, 64)
    idx, w, _ = moe.gate(x[None])
    assert torch.allclose(moe.dispatch(x, idx, w), dispatch_loop(moe, x, idx, w), atol=1e-6)


def test_moe_aux_loss_formula_and_gradients():
    torch.manual_seed(0)
    cfg = tiny_config(use_moe=True, aux_loss_alpha=0.1, seq_aux=True)
    model = MiniMindForCausalLM(cfg).train()
    x = torch.randint(0, 6400, (2, 16))
    out = model(x, labels=x)
    assert out.aux_loss.item() > 0
    (out.loss + out.aux_loss).backward()
    gate = model.model.layers[0].mlp.gate.weight
    assert gate.grad is not None and gate.grad.abs().sum() > 0, "the router must learn"
    # Hand-computed aux loss for one layer (sequence-level): alpha * sum_e f_e * P_e.
    g = model.model.layers[0].mlp.gate
    h = torch.randn(2, 16, 64)
    idx, _, aux = g(h)
    scores = torch.softmax(h.reshape(-1, 64) @ g.weight.T, -1).view(2, 16, 4)
    f = torch.zeros(2, 4)
    for b in range(2):
        for e in idx.view(2, -1)[b].tolist():
            f[b, e] += 1
    f = f / (16 * 2 / 4)
    manual = (f * scores.mean(1)).sum(1).mean() * 0.1
    assert torch.allclose(aux, manual, atol=1e-6)
    model.eval()
    assert model(x).aux_loss.item() == 0.0, "no aux loss at inference"


def test_moe_routing_topk_weights_normalised():
    torch.manual_seed(0)
    gate = MOEFeedForward(tiny_config(use_moe=True)).gate
    idx, w, _ = gate(torch.randn(1, 10, 64))
    assert idx.shape == (10, 2) and torch.allclose(w.sum(-1), torch.ones(10))
    assert (idx[:, 0] != idx[:, 1]).all()


def test_moe_model_generates_with_cache():
    model = tiny_model(use_moe=True)
    prompt = torch.randint(3, 6400, (1, 5))
    ref = greedy_no_cache(model, prompt, 6)
    out = model.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert torch.equal(out, ref)
