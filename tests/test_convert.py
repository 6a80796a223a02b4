"""Tests for scripts/convert_model.py: every export reloads in its target runtime with the same numbers.

torch2hf  -> AutoModelForCausalLM(trust_remote_code=True) logits == ours (dense and MoE), tokenizer + template,
             and hf2torch gives the state dict back.
torch2llama -> transformers' own LlamaForCausalLM (no remote code): same logits, same greedy tokens; YaRN.
gguf      -> read back with gguf.GGUFReader (names, reversed shapes, metadata, vocab, template) and run through
             a small llama.cpp-style forward (interleaved RoPE on the permuted Q/K): same logits.
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

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from scripts import convert_model as cm  # noqa: E402

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
FLAGS = ["--hidden_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4",
         "--num_key_value_heads", "2"]
SOURCE_TOKENIZER_CONFIG = json.loads((ROOT / "model" / "tokenizer_config.json").read_text(encoding="utf-8"))


def make_pth(tmp_path, use_moe=False, yarn=False, seed=0):
    """A tiny random model saved as an fp32 .pth. Weights are scaled up and norms randomised so that logits are
    O(1) and a swapped norm / head order / missing permutation shows up far above the tolerances."""
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(MiniMindConfig(**TINY, use_moe=use_moe, inference_rope_scaling=yarn)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.08)
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
@pytest.mark.parametrize("use_moe", [False, True], ids=["dense", "moe"])
def test_torch2hf_remote_code_parity_and_roundtrip(tmp_path, use_moe):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, pth = make_pth(tmp_path, use_moe=use_moe)
    out = tmp_path / "hf"
    run_cli("torch2hf", "--pth", pth, *FLAGS, "--use_moe", int(use_moe), "--dtype", "float32", "--out_dir", out)

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "model_minimind.MiniMindForCausalLM"
    assert cfg["use_moe"] is use_moe and (out / "model_minimind.py").is_file()
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


# ----------------------------------------------------------------------------------------------------------------
# Errors: one line, exit 2
# ----------------------------------------------------------------------------------------------------------------
def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    _, pth = make_pth(tmp_path)

    def fails(*argv):
        with pytest.raises(SystemExit) as e:
            run_cli(*argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err, err
        return err

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
