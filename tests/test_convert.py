"""Tests for scripts/convert_model.py: every export reloads in its target runtime with the same numbers.

torch2hf  -> AutoModelForCausalLM(trust_remote_code=True) logits == ours (MiniMind2 and minimind-3, dense and
             MoE), tokenizer + template, and hf2torch gives the state dict back.
torch2llama / torch2transformers -> transformers' own LlamaForCausalLM (MiniMind2), Qwen3ForCausalLM and
             Qwen3MoeForCausalLM (minimind-3), no remote code: same logits, same greedy tokens; YaRN; hf2torch back.
gguf      -> read back with gguf.GGUFReader (names, reversed shapes, metadata, vocab, template) and run through
             a small llama.cpp-style forward (llama: interleaved RoPE on the permuted Q/K; qwen3 / qwen3moe: NEOX
             RoPE, QK-norm, stacked experts): same logits.
errors    -> one `error:` line, exit status 2, no traceback.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from helpers import MINIMIND3_TOKENIZER, spread_weights_  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from scripts import convert_model as cm  # noqa: E402

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
FLAGS = ["--hidden_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4",
         "--num_key_value_heads", "2"]
SOURCE_TOKENIZER_CONFIG = json.loads((ROOT / "model" / "tokenizer_config.json").read_text(encoding="utf-8"))


def make_pth(tmp_path, use_moe=False, yarn=False, seed=0, preset=None):
    """A tiny random model saved as an fp32 .pth. Weights are scaled up and norms randomised so that logits are
    O(1) and a swapped norm / head order / missing permutation shows up far above the tolerances.
    `preset` "minimind3" builds the minimind-3 architecture at the tiny size (MoE from `use_moe`)."""
    torch.manual_seed(seed)
    config = MiniMindConfig.from_preset(preset or "minimind2-small", **TINY, use_moe=use_moe,
                                        inference_rope_scaling=yarn)
    model = spread_weights_(MiniMindForCausalLM(config), 0.08)
    path = tmp_path / f"full_sft_64{'_moe' if use_moe else ''}.pth"
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, path)
    return model, path


def run_cli(*argv):
    cm.main([str(a) for a in argv])


def greedy(model, ids, n):
    """Our model's greedy decoding, the plain way: full forward, argmax, append."""
    ids = ids.clone()
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids


# ----------------------------------------------------------------------------------------------------------------
# torch2hf / hf2torch
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset,use_moe", [("minimind2-small", False), ("minimind2-small", True),
                                            ("minimind3", False), ("minimind3", True)],
                         ids=["minimind2", "minimind2-moe", "minimind3", "minimind3-moe"])
def test_torch2hf_remote_code_parity_and_roundtrip(tmp_path, preset, use_moe):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, pth = make_pth(tmp_path, use_moe=use_moe, preset=preset)
    out = tmp_path / "hf"
    run_cli("torch2hf", "--pth", pth, "--preset", preset, *FLAGS, "--use_moe", int(use_moe), "--dtype", "float32",
            "--out_dir", out)

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "model_minimind.MiniMindForCausalLM"
    assert cfg["use_moe"] is use_moe and (out / "model_minimind.py").is_file()
    assert cfg["qk_norm"] is (preset == "minimind3")
    assert (out / "model.safetensors").is_file()
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["bos_token_id"], gen["pad_token_id"]) == (2, 1, 0)
    assert gen["do_sample"] is True and 0 < gen["temperature"] <= 1 and 0 < gen["top_p"] <= 1

    hf = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True).eval()
    assert type(hf) is not MiniMindForCausalLM  # really the copied remote code, not our imported class
    assert type(hf).__name__ == "MiniMindForCausalLM" and hf.dtype == torch.float32
    ids = torch.randint(0, 6400, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = model(ids).logits, hf(ids).logits
    assert ref.abs().mean() > 0.1  # non-trivial logits, so the tolerance below means something
    assert (ref - got).abs().max().item() <= 1e-5

    # transformers' generate() on the exported remote code, with its KV cache, equals plain greedy decoding of
    # our model. This is what broke silently when transformers 5.24 renamed the cache keyword (the remote model
    # then rebuilt an empty cache each step and saw only the last token).
    prompt = ids[:1, :5]
    ours = greedy(model, prompt, 10)
    assert len(set(ours[0, 5:].tolist())) > 3, "test model too degenerate to catch cache bugs"
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, use_cache=True,
                         max_new_tokens=10, min_new_tokens=10, top_p=None, temperature=None)
    assert torch.equal(ours, theirs)

    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == 6400 and tok.chat_template == SOURCE_TOKENIZER_CONFIG["chat_template"]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # transformers-4-readable class name (save_pretrained on v5 would write "TokenizersBackend")
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"

    back = tmp_path / "back.pth"
    run_cli("hf2torch", "--hf_dir", out, "--out_path", back)
    src, got_sd = torch.load(pth, weights_only=True), torch.load(back, weights_only=True)
    assert set(got_sd) == set(src)
    for k in src:
        assert got_sd[k].dtype == torch.float16, k
        assert torch.equal(got_sd[k], src[k].half()), k


# ----------------------------------------------------------------------------------------------------------------
# torch2llama
# ----------------------------------------------------------------------------------------------------------------
def test_torch2llama_parity_generate_and_back(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM
    model, pth = make_pth(tmp_path)
    out = tmp_path / "llama"
    run_cli("torch2llama", "--pth", pth, *FLAGS, "--dtype", "float32", "--out_dir", out)

    cfg = json.loads((out / "config.json").read_text())
    assert "auto_map" not in cfg and not (out / "model_minimind.py").exists()
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["tie_word_embeddings"] is True and cfg["head_dim"] == 16 and cfg["num_key_value_heads"] == 2
    assert cfg["intermediate_size"] == model.config.intermediate_size and cfg["rms_norm_eps"] == 1e-5
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e6} and cfg["rope_theta"] == 1e6
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 0)

    llama = AutoModelForCausalLM.from_pretrained(str(out)).eval()  # no trust_remote_code
    assert type(llama) is LlamaForCausalLM
    ids = torch.randint(0, 6400, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, got = model(ids).logits, llama(ids).logits
    assert (ref - got).abs().max().item() <= 1e-5

    prompt = ids[:1, :5]
    ours = greedy(model, prompt, 10)
    theirs = llama.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=10,
                            min_new_tokens=10, top_p=None, temperature=None)
    assert torch.equal(ours, theirs)

    back = tmp_path / "back.pth"  # a Llama directory converts back too
    run_cli("hf2torch", "--hf_dir", out, "--out_path", back)
    src, got_sd = torch.load(pth, weights_only=True), torch.load(back, weights_only=True)
    assert set(got_sd) == set(src) and all(torch.equal(got_sd[k], src[k].half()) for k in src)


def test_torch2llama_yarn(tmp_path):
    from transformers import LlamaForCausalLM
    model, pth = make_pth(tmp_path, yarn=True)
    out = tmp_path / "llama_yarn"
    run_cli("torch2llama", "--pth", pth, *FLAGS, "--inference_rope_scaling", "--dtype", "float32",
            "--out_dir", out)
    cfg = json.loads((out / "config.json").read_text())
    expected = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 2048,
                "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.0}
    assert cfg["rope_parameters"] == expected
    assert cfg["rope_scaling"] == {k: v for k, v in expected.items() if k != "rope_theta"}  # transformers-4 key
    llama = LlamaForCausalLM.from_pretrained(str(out)).eval()
    assert llama.config.rope_parameters == expected  # the legacy keys did not change what transformers 5 reads
    ids = torch.randint(0, 6400, (1, 24), generator=torch.Generator().manual_seed(3))
    plain = MiniMindForCausalLM(MiniMindConfig(**TINY)).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref, got, no_yarn = model(ids).logits, llama(ids).logits, plain(ids).logits
    assert (ref - no_yarn).abs().max() > 1e-3  # YaRN changes the numbers, so the match below is meaningful
    assert (ref - got).abs().max().item() <= 1e-5


@pytest.mark.parametrize("use_moe", [False, True], ids=["qwen3", "qwen3_moe"])
def test_torch2transformers_minimind3_is_qwen3(tmp_path, use_moe):
    """minimind-3 -> transformers' own Qwen3ForCausalLM / Qwen3MoeForCausalLM, no remote code: same logits, same
    greedy tokens, a config.json every transformers version reads, and hf2torch gives the weights back."""
    from transformers import AutoModelForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM
    model, pth = make_pth(tmp_path, use_moe=use_moe, preset="minimind3")
    out = tmp_path / "qwen3"
    run_cli("torch2transformers", "--pth", pth, "--preset", "minimind3", *FLAGS, "--use_moe", int(use_moe),
            "--dtype", "float32", "--out_dir", out)

    cfg = json.loads((out / "config.json").read_text())
    arch = "qwen3_moe" if use_moe else "qwen3"
    assert "auto_map" not in cfg and not (out / "model_minimind.py").exists()
    assert cfg["model_type"] == arch and cfg["architectures"] == [cm.HF_CLASS[arch]]
    assert cfg["tie_word_embeddings"] is True and cfg["head_dim"] == 16 and cfg["num_key_value_heads"] == 2
    assert cfg["rms_norm_eps"] == 1e-6 and cfg["intermediate_size"] == model.config.intermediate_size
    assert cfg["rope_theta"] == 1e6 and cfg["use_sliding_window"] is False  # rope_theta: transformers 4.x's key
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 0)
    if use_moe:
        # `num_experts` (what transformers 4.x, vLLM and llama.cpp read), never 5.x's `num_local_experts` alone:
        # a 4.x reader would then build its default 128 experts.
        assert cfg["num_experts"] == 4 and "num_local_experts" not in cfg
        assert cfg["num_experts_per_tok"] == 1 and cfg["norm_topk_prob"] is True
        assert cfg["moe_intermediate_size"] == model.config.moe_intermediate_size
        assert cfg["decoder_sparse_step"] == 1 and cfg["mlp_only_layers"] == []
        assert cfg["router_aux_loss_coef"] == 5e-4
        # On disk: one tensor per expert (the hub layout every version loads), whatever the writer's version.
        from safetensors import safe_open
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
        assert "model.layers.0.mlp.experts.3.down_proj.weight" in keys and "model.layers.0.mlp.gate.weight" in keys

    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()  # no trust_remote_code
    assert type(hf) is (Qwen3MoeForCausalLM if use_moe else Qwen3ForCausalLM)
    ids = torch.randint(0, 6400, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, got = model(ids).logits, hf(ids).logits
    assert ref.abs().mean() > 0.1
    assert (ref - got).abs().max().item() <= 1e-5

    prompt = ids[:1, :5]
    ours = greedy(model, prompt, 10)
    assert len(set(ours[0, 5:].tolist())) > 3, "test model too degenerate to catch cache bugs"
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=10,
                         min_new_tokens=10, top_p=None, temperature=None)
    assert torch.equal(ours, theirs)

    back = tmp_path / "back.pth"
    run_cli("hf2torch", "--hf_dir", out, "--out_path", back)
    src, got_sd = torch.load(pth, weights_only=True), torch.load(back, weights_only=True)
    assert set(got_sd) == set(src) and all(torch.equal(got_sd[k], src[k].half()) for k in src)
    # The default output name follows the native convention, _moe included.
    run_cli("hf2torch", "--hf_dir", out, "--save_dir", tmp_path / "native")
    assert (tmp_path / "native" / f"full_sft_64{'_moe' if use_moe else ''}.pth").is_file()


def test_torch2transformers_qwen3_yarn(tmp_path):
    from transformers import Qwen3ForCausalLM
    model, pth = make_pth(tmp_path, yarn=True, preset="minimind3")
    out = tmp_path / "qwen3_yarn"
    run_cli("torch2transformers", "--pth", pth, "--preset", "minimind3", *FLAGS, "--inference_rope_scaling",
            "--dtype", "float32", "--out_dir", out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rope_scaling"]["rope_type"] == "yarn" and cfg["rope_scaling"]["attention_factor"] == 1.0
    hf = Qwen3ForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.randint(0, 6400, (1, 24), generator=torch.Generator().manual_seed(3))
    plain = MiniMindForCausalLM(MiniMindConfig.from_preset("minimind3", **TINY)).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref, got, no_yarn = model(ids).logits, hf(ids).logits, plain(ids).logits
    assert (ref - no_yarn).abs().max() > 1e-3
    assert (ref - got).abs().max().item() <= 1e-5
    back = tmp_path / "back.pth"
    run_cli("hf2torch", "--hf_dir", out, "--out_path", back)  # the YaRN switch survives the round trip
    assert cm.minimind_config_from_plain(hf.config, "qwen3").inference_rope_scaling


def test_torch2transformers_minimind2_is_llama(tmp_path):
    """torch2transformers on MiniMind2 dense writes what torch2llama writes."""
    _, pth = make_pth(tmp_path)
    run_cli("torch2transformers", "--pth", pth, *FLAGS, "--dtype", "float32", "--out_dir", tmp_path / "a")
    run_cli("torch2llama", "--pth", pth, *FLAGS, "--dtype", "float32", "--out_dir", tmp_path / "b")
    a, b = (json.loads((tmp_path / d / "config.json").read_text()) for d in "ab")
    assert a == b and a["model_type"] == "llama"
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_hf2torch_reads_upstream_minimind3_directory(tmp_path):
    """A transformers directory as upstream's minimind-3 code writes it (its config names, its keys, tied
    lm_head left out) converts to a native .pth."""
    from safetensors.torch import save_file
    model, _ = make_pth(tmp_path, use_moe=True, preset="minimind3")
    c = model.config
    up = tmp_path / "upstream"
    up.mkdir()
    (up / "config.json").write_text(json.dumps({
        "model_type": "minimind", "hidden_size": 64, "num_hidden_layers": 2, "use_moe": True, "dropout": 0.0,
        "vocab_size": 6400, "bos_token_id": 1, "eos_token_id": 2, "flash_attn": True, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu", "intermediate_size": c.intermediate_size,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": True,
        "inference_rope_scaling": False, "rope_parameters": None, "num_experts": 4, "num_experts_per_tok": 1,
        "moe_intermediate_size": c.moe_intermediate_size, "norm_topk_prob": True, "router_aux_loss_coef": 5e-4}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              str(up / "model.safetensors"), metadata={"format": "pt"})
    back = tmp_path / "back.pth"
    run_cli("hf2torch", "--hf_dir", up, "--out_path", back)
    got = torch.load(back, weights_only=True)
    src = model.state_dict()
    assert set(got) == set(src) and all(torch.equal(got[k], src[k].half()) for k in src)


def cli_error(capsys, *argv) -> str:
    """Run convert_model's CLI expecting exit code 2 and one "error: ..." line on stderr; returns that line."""
    with pytest.raises(SystemExit) as e:
        run_cli(*argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


def test_exports_without_a_plain_class_are_refused(tmp_path, capsys):
    def fails(*argv):
        return cli_error(capsys, *argv)

    _, pth2 = make_pth(tmp_path, use_moe=True)  # MiniMind2-MoE: shared expert, no plain class
    err = fails("torch2transformers", "--pth", pth2, *FLAGS, "--use_moe", 1, "--out_dir", tmp_path / "x")
    assert "torch2hf" in err and "shared experts=1" in err
    (tmp_path / "m3").mkdir()
    _, pth3 = make_pth(tmp_path / "m3", preset="minimind3")
    err = fails("torch2llama", "--pth", pth3, "--preset", "minimind3", *FLAGS, "--out_dir", tmp_path / "y")
    assert "Qwen3ForCausalLM" in err and "torch2transformers" in err
    # A minimind-3 file with MiniMind2 flags: the error names the preset that fits.
    err = fails("torch2transformers", "--pth", pth3, *FLAGS, "--out_dir", tmp_path / "z")
    assert "does not match" in err and "pass --preset minimind3 --hidden_size 64" in err
    assert not any((tmp_path / d).exists() for d in "xyz")


def test_dense_only_exports_reject_moe(tmp_path, capsys):
    _, pth = make_pth(tmp_path, use_moe=True)
    for cmd in ("torch2llama", "gguf"):
        with pytest.raises(SystemExit) as e:
            run_cli(cmd, "--pth", pth, *FLAGS, "--use_moe", 1, "--out_dir" if cmd == "torch2llama" else "--out_file",
                    tmp_path / f"x_{cmd}")
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and "dense" in err and "torch2hf" in err
        assert not (tmp_path / f"x_{cmd}").exists()


# ----------------------------------------------------------------------------------------------------------------
# GGUF
# ----------------------------------------------------------------------------------------------------------------
def test_permute_qk_matches_reference_and_inverts():
    n_head, d, cols = 3, 8, 5
    w = torch.arange(n_head * d * cols, dtype=torch.float32).reshape(n_head * d, cols)
    p = cm.permute_qk(w, n_head)
    # Reference, index by index: within each head, row (half, i) of the rotate_half layout goes to row 2i + half.
    ref = torch.empty_like(w)
    for h in range(n_head):
        for half in range(2):
            for i in range(d // 2):
                ref[h * d + 2 * i + half] = w[h * d + half * d // 2 + i]
    assert torch.equal(p, ref)
    assert torch.equal(cm.unpermute_qk(p, n_head), w)
    assert not torch.equal(p, w)
    # And what it is for: interleaved RoPE on permuted q/k gives the same scores as rotate_half RoPE.
    x = torch.randn(4, cols)
    q, k = x @ w.T / w.numel(), x @ w.flip(0).T / w.numel()
    angle = 0.7 * torch.arange(1, d // 2 + 1, dtype=torch.float32)
    cos, sin = angle.cos(), angle.sin()

    def rope_halves(v):
        a, b = v[..., : d // 2], v[..., d // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)

    def rope_pairs(v):
        a, b = v[..., 0::2], v[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)

    wq_p, wk_p = cm.permute_qk(w, n_head), cm.permute_qk(w.flip(0), n_head)
    qp, kp = x @ wq_p.T / w.numel(), x @ wk_p.T / w.numel()
    for h in range(n_head):
        s = slice(h * d, (h + 1) * d)
        assert torch.allclose(rope_halves(q[:, s]) @ rope_halves(k[:, s]).T,
                              rope_pairs(qp[:, s]) @ rope_pairs(kp[:, s]).T, atol=1e-5)


def gguf_field(reader, key):
    return reader.fields[key].contents()


def llamacpp_style_forward(reader, ids, n_head, n_kv, eps, theta):
    """The llama architecture as llama.cpp runs it from the GGUF tensors: LLAMA ('normal') RoPE rotates adjacent
    pairs, lm_head falls back to token_embd when output.weight is absent."""
    T = {t.name: torch.from_numpy(np.array(t.data, dtype=np.float32)) for t in reader.tensors}
    n_layer = gguf_field(reader, "llama.block_count")
    x = T["token_embd.weight"][ids]
    S, H = x.shape
    D = H // n_head
    ang = torch.arange(S, dtype=torch.float32)[:, None] * theta ** (-torch.arange(0, D, 2).float() / D)
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]

    def rope(v):
        a, b = v[..., 0::2], v[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)

    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * w

    causal = torch.ones(S, S, dtype=torch.bool).tril()
    for i in range(n_layer):
        b = f"blk.{i}."
        h = rms(x, T[b + "attn_norm.weight"])
        q = rope((h @ T[b + "attn_q.weight"].T).view(S, n_head, D))
        k = rope((h @ T[b + "attn_k.weight"].T).view(S, n_kv, D)).repeat_interleave(n_head // n_kv, 1)
        v = (h @ T[b + "attn_v.weight"].T).view(S, n_kv, D).repeat_interleave(n_head // n_kv, 1)
        att = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(D)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + torch.einsum("hqk,khd->qhd", att, v).reshape(S, H) @ T[b + "attn_output.weight"].T
        h = rms(x, T[b + "ffn_norm.weight"])
        x = x + (F.silu(h @ T[b + "ffn_gate.weight"].T) * (h @ T[b + "ffn_up.weight"].T)) @ T[b + "ffn_down.weight"].T
    x = rms(x, T["output_norm.weight"])
    return x @ T.get("output.weight", T["token_embd.weight"]).T


def test_gguf_export(tmp_path):
    model, pth = make_pth(tmp_path)
    out = tmp_path / "gguf" / "minimind.gguf"
    run_cli("gguf", "--pth", pth, *FLAGS, "--outtype", "f32", "--out_file", out)
    reader = gguf.GGUFReader(str(out))
    c = model.config

    assert gguf_field(reader, "general.architecture") == "llama"
    expected_kv = {"llama.block_count": 2, "llama.context_length": 32768, "llama.embedding_length": 64,
                   "llama.feed_forward_length": c.intermediate_size, "llama.attention.head_count": 4,
                   "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16,
                   "llama.vocab_size": 6400, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                   "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.model": "gpt2",
                   "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.add_bos_token": False}
    for key, value in expected_kv.items():
        assert gguf_field(reader, key) == value, key
    assert gguf_field(reader, "llama.rope.freq_base") == pytest.approx(1e6)
    assert gguf_field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert gguf_field(reader, "tokenizer.chat_template") == SOURCE_TOKENIZER_CONFIG["chat_template"]
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    types = gguf_field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == 6400 and len(types) == 6400
    assert tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] and tokens[3] == "<think>"
    assert types[:3] == [gguf.TokenType.CONTROL] * 3
    assert types[3:11] == [gguf.TokenType.USER_DEFINED] * 8 and set(types[11:]) == {gguf.TokenType.NORMAL}
    merges = gguf_field(reader, "tokenizer.ggml.merges")
    assert len(merges) > 6000 and all(m.count(" ") == 1 for m in merges[:50])

    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}  # GGUF lists dims innermost first
    expected = {"token_embd.weight": [64, 6400], "output_norm.weight": [64]}
    for i in range(2):
        expected.update({f"blk.{i}.attn_norm.weight": [64], f"blk.{i}.ffn_norm.weight": [64],
                         f"blk.{i}.attn_q.weight": [64, 64], f"blk.{i}.attn_k.weight": [64, 32],
                         f"blk.{i}.attn_v.weight": [64, 32], f"blk.{i}.attn_output.weight": [64, 64],
                         f"blk.{i}.ffn_gate.weight": [64, c.intermediate_size],
                         f"blk.{i}.ffn_up.weight": [64, c.intermediate_size],
                         f"blk.{i}.ffn_down.weight": [c.intermediate_size, 64]})
    assert shapes == expected  # no output.weight: tied, llama.cpp reuses token_embd
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}

    ids = torch.randint(0, 6400, (10,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model(ids[None]).logits[0]
    got = llamacpp_style_forward(reader, ids, 4, 2, 1e-5, 1e6)
    assert (ref - got).abs().max().item() <= 1e-4

    modelfile = (out.parent / "Modelfile").read_text()
    assert "FROM ./minimind.gguf" in modelfile
    assert 'TEMPLATE """' in modelfile and "<|im_start|>{{ .Role }}" in modelfile
    assert "<|im_start|>assistant" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and 'PARAMETER stop "<|endoftext|>"' in modelfile
    assert "PARAMETER temperature" in modelfile and "PARAMETER top_p" in modelfile


def test_gguf_f16_keeps_norms_f32(tmp_path):
    _, pth = make_pth(tmp_path)
    out = tmp_path / "m16.gguf"
    run_cli("gguf", "--pth", pth, *FLAGS, "--out_file", out)  # default --outtype f16
    reader = gguf.GGUFReader(str(out))
    for t in reader.tensors:
        want = gguf.GGMLQuantizationType.F32 if "norm" in t.name else gguf.GGMLQuantizationType.F16
        assert t.tensor_type == want, t.name
    assert gguf_field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16


def qwen3_style_forward(reader, ids, n_head, n_kv, head_dim, eps, theta, arch):
    """qwen3 / qwen3moe as llama.cpp runs them from the GGUF tensors: NEOX RoPE (the two halves of a head rotate
    together, i.e. rotate_half, so Q/K are stored unpermuted), RMSNorm of each q/k head before RoPE, and for
    qwen3moe a softmax router whose top-k weights are renormalised, over the stacked expert tensors."""
    T = {t.name: torch.from_numpy(np.array(t.data, dtype=np.float32)) for t in reader.tensors}
    n_layer = gguf_field(reader, f"{arch}.block_count")
    x = T["token_embd.weight"][ids]
    S, H = x.shape
    D = head_dim
    ang = torch.arange(S, dtype=torch.float32)[:, None] * theta ** (-torch.arange(0, D, 2).float() / D)
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]

    def rope(v):
        a, b = v[..., : D // 2], v[..., D // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)

    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * w

    def ffn(h, gate, up, down):
        return (F.silu(h @ gate.T) * (h @ up.T)) @ down.T

    causal = torch.ones(S, S, dtype=torch.bool).tril()
    for i in range(n_layer):
        b = f"blk.{i}."
        h = rms(x, T[b + "attn_norm.weight"])
        q = rope(rms((h @ T[b + "attn_q.weight"].T).view(S, n_head, D), T[b + "attn_q_norm.weight"]))
        k = rope(rms((h @ T[b + "attn_k.weight"].T).view(S, n_kv, D), T[b + "attn_k_norm.weight"]))
        k = k.repeat_interleave(n_head // n_kv, 1)
        v = (h @ T[b + "attn_v.weight"].T).view(S, n_kv, D).repeat_interleave(n_head // n_kv, 1)
        att = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(D)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + torch.einsum("hqk,khd->qhd", att, v).reshape(S, n_head * D) @ T[b + "attn_output.weight"].T
        h = rms(x, T[b + "ffn_norm.weight"])
        if arch == "qwen3":
            x = x + ffn(h, T[b + "ffn_gate.weight"], T[b + "ffn_up.weight"], T[b + "ffn_down.weight"])
            continue
        k_used = gguf_field(reader, "qwen3moe.expert_used_count")
        probs = (h @ T[b + "ffn_gate_inp.weight"].T).softmax(-1)
        w, sel = probs.topk(k_used, -1)
        w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for t in range(S):
            for j in range(k_used):
                e = int(sel[t, j])
                out[t] += w[t, j] * ffn(h[t], T[b + "ffn_gate_exps.weight"][e], T[b + "ffn_up_exps.weight"][e],
                                        T[b + "ffn_down_exps.weight"][e])
        x = x + out
    x = rms(x, T["output_norm.weight"])
    return x @ T.get("output.weight", T["token_embd.weight"]).T


@pytest.mark.parametrize("use_moe", [False, True], ids=["qwen3", "qwen3moe"])
def test_gguf_export_minimind3(tmp_path, use_moe):
    model, pth = make_pth(tmp_path, use_moe=use_moe, preset="minimind3")
    c = model.config
    arch = "qwen3moe" if use_moe else "qwen3"
    out = tmp_path / f"{arch}.gguf"
    run_cli("gguf", "--pth", pth, "--preset", "minimind3", *FLAGS, "--use_moe", int(use_moe), "--outtype", "f32",
            "--out_file", out)
    reader = gguf.GGUFReader(str(out))
    assert gguf_field(reader, "general.architecture") == arch
    expected_kv = {f"{arch}.block_count": 2, f"{arch}.context_length": 32768, f"{arch}.embedding_length": 64,
                   f"{arch}.feed_forward_length": c.intermediate_size, f"{arch}.attention.head_count": 4,
                   f"{arch}.attention.head_count_kv": 2, f"{arch}.rope.dimension_count": 16,
                   f"{arch}.attention.key_length": 16, f"{arch}.attention.value_length": 16,
                   "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.model": "gpt2"}
    if use_moe:
        expected_kv.update({"qwen3moe.expert_count": 4, "qwen3moe.expert_used_count": 1,
                            "qwen3moe.expert_feed_forward_length": c.moe_intermediate_size})
    for key, value in expected_kv.items():
        assert gguf_field(reader, key) == value, key
    assert gguf_field(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert gguf_field(reader, f"{arch}.rope.freq_base") == pytest.approx(1e6)

    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}  # innermost dimension first
    inter = c.moe_intermediate_size if use_moe else c.intermediate_size
    expected = {"token_embd.weight": [64, 6400], "output_norm.weight": [64]}
    for i in range(2):
        b = f"blk.{i}."
        expected.update({b + "attn_norm.weight": [64], b + "ffn_norm.weight": [64], b + "attn_q.weight": [64, 64],
                         b + "attn_k.weight": [64, 32], b + "attn_v.weight": [64, 32],
                         b + "attn_output.weight": [64, 64], b + "attn_q_norm.weight": [16],
                         b + "attn_k_norm.weight": [16]})
        if use_moe:
            expected.update({b + "ffn_gate_inp.weight": [64, 4], b + "ffn_gate_exps.weight": [64, inter, 4],
                             b + "ffn_up_exps.weight": [64, inter, 4], b + "ffn_down_exps.weight": [inter, 64, 4]})
        else:
            expected.update({b + "ffn_gate.weight": [64, inter], b + "ffn_up.weight": [64, inter],
                             b + "ffn_down.weight": [inter, 64]})
    assert shapes == expected  # no output.weight: tied, llama.cpp reuses token_embd
    # NEOX RoPE: Q/K rows are stored as they are (the llama export permutes them).
    T = {t.name: np.array(t.data) for t in reader.tensors}
    assert np.array_equal(T["blk.0.attn_q.weight"], model.model.layers[0].self_attn.q_proj.weight.detach().numpy())

    ids = torch.randint(0, 6400, (10,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model(ids[None]).logits[0]
    got = qwen3_style_forward(reader, ids, 4, 2, 16, 1e-6, 1e6, arch)
    assert ref.abs().mean() > 0.1
    assert (ref - got).abs().max().item() <= 1e-4

    # f16: matrices f16; norms and the router stay f32.
    out16 = tmp_path / f"{arch}16.gguf"
    run_cli("gguf", "--pth", pth, "--preset", "minimind3", *FLAGS, "--use_moe", int(use_moe), "--out_file", out16)
    for t in gguf.GGUFReader(str(out16)).tensors:
        f32 = "norm" in t.name or "ffn_gate_inp" in t.name
        assert t.tensor_type == (gguf.GGMLQuantizationType.F32 if f32 else gguf.GGMLQuantizationType.F16), t.name


@pytest.mark.skipif(not MINIMIND3_TOKENIZER.is_dir(), reason=f"minimind-3 tokenizer not found at {MINIMIND3_TOKENIZER}")
def test_gguf_with_the_minimind3_tokenizer(tmp_path):
    _, pth = make_pth(tmp_path, preset="minimind3")
    out = tmp_path / "m3.gguf"
    run_cli("gguf", "--pth", pth, "--preset", "minimind3", *FLAGS, "--tokenizer_path", MINIMIND3_TOKENIZER,
            "--out_file", out)
    reader = gguf.GGUFReader(str(out))
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    types = gguf_field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == 6400 and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tokens[21] == "<tool_call>" and tokens[25] == "<think>" and tokens[35] == "<|buffer9|>"
    assert types[:21] == [gguf.TokenType.CONTROL] * 21  # Qwen-style control tokens
    assert types[21:36] == [gguf.TokenType.USER_DEFINED] * 15 and set(types[36:]) == {gguf.TokenType.NORMAL}
    tc = json.loads((MINIMIND3_TOKENIZER / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert gguf_field(reader, "tokenizer.chat_template") == tc["chat_template"]


# ----------------------------------------------------------------------------------------------------------------
# Errors: one line, exit 2
# ----------------------------------------------------------------------------------------------------------------
def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    _, pth = make_pth(tmp_path)

    def fails(*argv):
        return cli_error(capsys, *argv)

    assert "not found" in fails("torch2hf", "--pth", tmp_path / "missing.pth", *FLAGS, "--out_dir", tmp_path / "o")
    assert "full_sft_64_moe.pth" in fails("torch2hf", "--save_dir", tmp_path, "--weight", "full_sft", "--hidden_size",
                                      "64", "--num_hidden_layers", "2", "--use_moe", "1")  # no _moe file
    err = fails("torch2hf", "--pth", pth, *FLAGS[2:], "--hidden_size", "128", "--out_dir", tmp_path / "o")
    assert "does not match" in err and "--hidden_size 64" in err  # it says which flags the file wants
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert "cannot read" in fails("gguf", "--pth", tmp_path / "junk.pth", *FLAGS, "--out_file", tmp_path / "j.gguf")
    assert "no config.json" in fails("hf2torch", "--hf_dir", tmp_path, "--out_path", tmp_path / "x.pth")
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    assert "refusing" in fails("torch2hf", "--pth", pth, *FLAGS, "--out_dir", keep)
    assert (keep / "notes.txt").read_text() == "mine" and not (tmp_path / "o").exists()


def test_cli_mismatch_error_without_traceback(tmp_path):
    _, pth = make_pth(tmp_path)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert_model.py"), "torch2llama", "--pth", str(pth),
                        "--hidden_size", "128", "--num_hidden_layers", "2", "--out_dir", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=str(tmp_path), env={**os.environ, "WANDB_MODE": "disabled"})
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    assert "does not match" in lines[0]


def test_gguf_yarn_metadata(tmp_path):
    _, pth = make_pth(tmp_path, yarn=True)
    out = tmp_path / "yarn.gguf"
    run_cli("gguf", "--pth", pth, *FLAGS, "--inference_rope_scaling", "--out_file", out)
    reader = gguf.GGUFReader(str(out))
    assert gguf_field(reader, "llama.rope.scaling.type") == "yarn"
    assert gguf_field(reader, "llama.rope.scaling.factor") == pytest.approx(16.0)
    assert gguf_field(reader, "llama.rope.scaling.original_context_length") == 2048
    # llama.cpp applies YaRN's 1 + 0.1 ln(16) itself; the stored factor cancels it to MiniMind's attention_factor 1.0
    assert gguf_field(reader, "llama.rope.scaling.attn_factor") * (1 + 0.1 * math.log(16)) == pytest.approx(1.0)
