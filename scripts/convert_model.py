"""Export MiniMind weights to the formats other tools load, and import them back.

Subcommands (each prints how to run the result):

  torch2hf     out/{weight}_{hidden}[_moe].pth -> a transformers directory with MiniMind's own code (auto_map +
               model_minimind.py, trust_remote_code=True). Dense and MoE. Loads with
               AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True) and AutoTokenizer.
  hf2torch     a transformers directory (torch2hf's or torch2llama's) -> a native half-precision .pth.
  torch2llama  dense only -> a plain LlamaForCausalLM directory (no remote code): MiniMind's math *is* Llama's
               (RMSNorm, RoPE with rotate_half, GQA, SwiGLU, tied embeddings), so only the config changes.
               This is what `vllm serve DIR` and llama.cpp's convert_hf_to_gguf.py read.
  gguf         dense only -> one .gguf file (architecture "llama", BPE tokenizer and chat template embedded)
               plus an ollama Modelfile beside it, written directly with the `gguf` package.

    python scripts/convert_model.py torch2hf --weight full_sft --hidden_size 512
    python scripts/convert_model.py torch2hf --weight full_sft --hidden_size 640 --use_moe 1 --out_dir MiniMind2-MoE
    python scripts/convert_model.py hf2torch --hf_dir out/full_sft_512-hf --out_path out/full_sft_512.pth
    python scripts/convert_model.py torch2llama --weight full_sft --hidden_size 512 [--inference_rope_scaling]
    python scripts/convert_model.py gguf --weight full_sft --hidden_size 512 --outtype f16

User mistakes (missing file, weights that do not fit the flags, MoE where only dense works, a non-empty
output folder that is not a model) end with one `error:` line and exit status 2.

Notes on the runtimes:
  * llama.cpp's convert_hf_to_gguf.py refuses MiniMind's tokenizer ("BPE pre-tokenizer was not recognized":
    its hash is not in llama.cpp's table). `gguf` here writes what it would write with pre = "gpt-2" (same
    tensors, Q/K permutation, token types, merges), so use it instead.
  * YaRN (--inference_rope_scaling): MiniMind uses attention_factor 1.0 (no magnitude scaling). transformers
    honours that; llama.cpp and some vLLM versions apply the YaRN paper's 1 + 0.1 ln(16) = 1.28 unless told
    otherwise. The `gguf` export stores the cancelling rope.scaling.attn_factor; see torch2llama's note for vLLM.
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.atomic_io import atomic_save, atomic_write_text  # noqa: E402
from model.model_minimind import YARN_ROPE_SCALING, MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.checkpoint import (DEFAULT_OUT, DEFAULT_TOKENIZER, WeightLoadError,  # noqa: E402
                              half_state_dict, load_state_dict_file, weight_name)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Sampling defaults shipped with every export (generation_config.json, Modelfile): MiniMind's own eval defaults.
TEMPERATURE, TOP_P = 0.85, 0.85
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # control tokens; tag tokens are user-defined


class ConvertError(Exception):
    """A user mistake: reported as one `error:` line, never a traceback."""


# ================================================================================================================
# Native weights in
# ================================================================================================================
def native_config(args) -> MiniMindConfig:
    return MiniMindConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                          num_attention_heads=args.num_attention_heads,
                          num_key_value_heads=args.num_key_value_heads, use_moe=bool(args.use_moe),
                          inference_rope_scaling=bool(args.inference_rope_scaling))


def source_path(args, config: MiniMindConfig) -> Path:
    if args.pth:
        return Path(args.pth)
    return Path(args.save_dir) / f"{weight_name(args.weight, config)}.pth"


def describe_state(state: dict) -> str:
    """What the file looks like, from its tensor shapes: turns a key/shape mismatch into the flags to use."""
    emb = state.get("model.embed_tokens.weight")
    layers = {k.split(".")[2] for k in state if k.startswith("model.layers.")}
    moe = any(".mlp.experts." in k for k in state)
    if emb is None or emb.dim() != 2:
        return "it does not look like a MiniMind state dict (no model.embed_tokens.weight)"
    return (f"the file looks like --hidden_size {emb.shape[1]} --num_hidden_layers {len(layers)} "
            f"--use_moe {int(moe)} (vocab {emb.shape[0]})")


def check_state_dict(state: dict, model, path) -> None:
    """strict=True semantics (same keys, same shapes) with a one-line message saying what differs."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return
    c = model.config
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} vs model "
                     f"{tuple(expected[k].shape)})")
    if missing:
        parts.append(f"{len(missing)} keys missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    raise ConvertError(
        f"{path} does not match MiniMind(hidden_size={c.hidden_size}, num_hidden_layers={c.num_hidden_layers}, "
        f"num_attention_heads={c.num_attention_heads}, num_key_value_heads={c.num_key_value_heads}, "
        f"use_moe={int(c.use_moe)}): {'; '.join(parts)}; {describe_state(state)}")


def load_native(args) -> MiniMindForCausalLM:
    """Build the model from the flags and load the .pth strictly, in fp32 (the export casts afterwards)."""
    config = native_config(args)
    path = source_path(args, config)
    if not path.is_file():
        hint = "" if args.pth else " (check --weight, --save_dir, --hidden_size and --use_moe, or pass --pth)"
        raise ConvertError(f"weights not found: {path}{hint}")
    try:
        state = load_state_dict_file(path)
    except Exception as e:  # a torn or non-torch file: name it instead of dumping the unpickler's traceback
        raise ConvertError(f"cannot read {path} as a torch state dict: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict):
        raise ConvertError(f"{path} holds a {type(state).__name__}, not a state dict")
    model = MiniMindForCausalLM(config)
    check_state_dict(state, model, path)
    model.load_state_dict(state, strict=True)
    print(f"loaded {path} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"hidden={config.hidden_size}, layers={config.num_hidden_layers}, moe={int(config.use_moe)})")
    return model.float().eval()


def require_dense(config: MiniMindConfig, what: str) -> None:
    if config.use_moe:
        raise ConvertError(f"{what} supports dense MiniMind only: the MoE model (shared experts + softmax router) "
                           f"has no Llama equivalent; export it with `torch2hf` (trust_remote_code) instead")


# ================================================================================================================
# Output helpers: whole directories appear at once, or not at all
# ================================================================================================================
def prepare_out_dir(out_dir: Path) -> Path:
    """A fresh temp folder beside `out_dir` to write into; `finish_out_dir` swaps it in.

    An existing `out_dir` is replaced only when it is empty or a previous export (has config.json): never
    silently wipe an unrelated folder."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConvertError(f"--out_dir {out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / "config.json").exists():
            raise ConvertError(f"--out_dir {out_dir} is a non-empty folder that is not a model export; "
                               f"refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp", dir=out_dir.parent))


def finish_out_dir(tmp: Path, out_dir: Path) -> None:
    # mkdtemp (and some writers) create owner-only entries; give the export the usual umask permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    for f in tmp.iterdir():
        os.chmod(f, 0o666 & ~umask)
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)


def copy_tokenizer(tokenizer_path: Path, out_dir: Path) -> None:
    """Copy tokenizer.json + tokenizer_config.json (chat template inside) as shipped.

    Why copy instead of `tokenizer.save_pretrained`: transformers 5 writes `"tokenizer_class":
    "TokenizersBackend"`, which transformers 4.x (what many vLLM / llama.cpp installs use) cannot load; the
    shipped files say `PreTrainedTokenizerFast`, which both generations read. Loading it first validates it."""
    from transformers import AutoTokenizer
    if not (tokenizer_path / "tokenizer.json").is_file():
        raise ConvertError(f"no tokenizer.json in {tokenizer_path} (--tokenizer_path)")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_path))
    if not tok.chat_template:
        raise ConvertError(f"the tokenizer in {tokenizer_path} has no chat template")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tokenizer_path / name, out_dir / name)


def generation_config(config):
    from transformers import GenerationConfig
    return GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                            pad_token_id=config.pad_token_id, do_sample=True, temperature=TEMPERATURE,
                            top_p=TOP_P, max_new_tokens=1024)


# ================================================================================================================
# torch2hf / hf2torch: transformers format with MiniMind's own code
# ================================================================================================================
def torch2hf(model: MiniMindForCausalLM, out_dir: Path, dtype: torch.dtype, tokenizer_path: Path) -> Path:
    tmp = prepare_out_dir(out_dir)
    try:
        model = model.to(dtype)
        model.generation_config = generation_config(model.config)
        # model_minimind.py registers MiniMindConfig / MiniMindForCausalLM for auto classes, so save_pretrained
        # writes auto_map into config.json and copies model_minimind.py next to the weights.
        model.save_pretrained(str(tmp))
        copy_tokenizer(tokenizer_path, tmp)
        if not (tmp / "model_minimind.py").is_file() or "auto_map" not in json.loads((tmp / "config.json").read_text()):
            raise RuntimeError("save_pretrained did not write the remote code (auto_map / model_minimind.py)")
        finish_out_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def minimind_config_from_llama(lc) -> MiniMindConfig:
    """The MiniMind config equivalent to a LlamaConfig written by torch2llama (refuses anything else)."""
    rope = dict(getattr(lc, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = rope.get("rope_theta", getattr(lc, "rope_theta", 1e6))
    yarn = rope_type == "yarn"
    if rope_type not in ("default", "yarn"):
        raise ConvertError(f"unsupported rope_type {rope_type!r} in the Llama config")
    if yarn:
        for k, v in YARN_ROPE_SCALING.items():
            if k != "type" and float(rope.get(k, v)) != float(v):
                raise ConvertError(f"the Llama config's YaRN {k}={rope.get(k)} differs from MiniMind's {v}")
    if lc.head_dim != lc.hidden_size // lc.num_attention_heads:
        raise ConvertError(f"head_dim {lc.head_dim} != hidden_size / num_attention_heads: not a MiniMind model")
    if not lc.tie_word_embeddings or lc.attention_bias or lc.mlp_bias:
        raise ConvertError("the Llama model has untied embeddings or biases: not a MiniMind model")
    return MiniMindConfig(hidden_size=lc.hidden_size, num_hidden_layers=lc.num_hidden_layers,
                          num_attention_heads=lc.num_attention_heads, num_key_value_heads=lc.num_key_value_heads,
                          intermediate_size=lc.intermediate_size, vocab_size=lc.vocab_size,
                          max_position_embeddings=lc.max_position_embeddings, rms_norm_eps=lc.rms_norm_eps,
                          rope_theta=theta, inference_rope_scaling=yarn, hidden_act=lc.hidden_act)


def hf2torch(hf_dir: Path, out_path: Path) -> MiniMindConfig:
    """Load a torch2hf or torch2llama directory and write its weights as a native half-precision .pth."""
    if not (hf_dir / "config.json").is_file():
        raise ConvertError(f"no config.json in {hf_dir} (--hf_dir must be a transformers model directory)")
    model_type = json.loads((hf_dir / "config.json").read_text()).get("model_type")
    if model_type == "minimind":
        # Our own class, not trust_remote_code: the directory's copy of model_minimind.py is not executed.
        loaded, info = MiniMindForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                           output_loading_info=True)
        config = loaded.config
    elif model_type == "llama":
        from transformers import LlamaForCausalLM
        loaded, info = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, output_loading_info=True)
        config = minimind_config_from_llama(loaded.config)
    else:
        raise ConvertError(f"{hf_dir}: model_type {model_type!r} is neither 'minimind' nor 'llama'")
    # from_pretrained only warns about missing / unexpected weights (and initialises missing ones randomly).
    problems = {k: sorted(v) for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys",
                                                                      "mismatched_keys", "error_msgs")}
    if problems:
        raise ConvertError(f"{hf_dir} does not load cleanly: " + "; ".join(
            f"{k}: {len(v)} (e.g. {v[0]})" for k, v in problems.items()))
    target = MiniMindForCausalLM(config)
    state = {k: v for k, v in loaded.state_dict().items()}
    check_state_dict(state, target, hf_dir)
    target.load_state_dict(state, strict=True)
    atomic_save(half_state_dict(target), out_path)
    return config


# ================================================================================================================
# torch2llama: a plain LlamaForCausalLM
# ================================================================================================================
def llama_rope_parameters(config: MiniMindConfig) -> dict:
    if config.inference_rope_scaling:
        y = config.yarn_scaling
        return {"rope_type": "yarn", "rope_theta": float(config.rope_theta), "factor": float(y["factor"]),
                "original_max_position_embeddings": int(y["original_max_position_embeddings"]),
                "beta_fast": float(y["beta_fast"]), "beta_slow": float(y["beta_slow"]),
                "attention_factor": float(y["attention_factor"])}
    return {"rope_type": "default", "rope_theta": float(config.rope_theta)}


def llama_config(config: MiniMindConfig, dtype: torch.dtype):
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_parameters=llama_rope_parameters(config), tie_word_embeddings=True, attention_bias=False,
        mlp_bias=False, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, dtype=str(dtype).replace("torch.", ""),
        architectures=["LlamaForCausalLM"])


def add_legacy_rope_keys(config_json: Path, config: MiniMindConfig) -> None:
    """Also write `rope_theta` / `rope_scaling` at the top level, the transformers-4 spelling that vLLM
    builds on transformers 4.x and llama.cpp's convert_hf_to_gguf.py read; transformers 5 ignores them in
    favour of `rope_parameters` (checked by the tests: the reloaded config is unchanged)."""
    d = json.loads(config_json.read_text())
    d["rope_theta"] = float(config.rope_theta)
    if config.inference_rope_scaling:
        rp = llama_rope_parameters(config)
        d["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
    atomic_write_text(config_json, json.dumps(d, indent=2, sort_keys=True) + "\n")


def torch2llama(model: MiniMindForCausalLM, out_dir: Path, dtype: torch.dtype, tokenizer_path: Path) -> Path:
    from transformers import LlamaForCausalLM
    require_dense(model.config, "torch2llama")
    llama = LlamaForCausalLM(llama_config(model.config, dtype))
    # The parity argument in one line: every MiniMind key exists in Llama with the same shape, and vice versa.
    llama.load_state_dict(model.state_dict(), strict=True)
    llama = llama.to(dtype).eval()
    tmp = prepare_out_dir(out_dir)
    try:
        llama.generation_config = generation_config(model.config)
        llama.save_pretrained(str(tmp))
        add_legacy_rope_keys(tmp / "config.json", model.config)
        copy_tokenizer(tokenizer_path, tmp)
        finish_out_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


# ================================================================================================================
# GGUF
# ================================================================================================================
def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotate_half row order -> GGUF/llama.cpp interleaved order, per head (llama.cpp's converter `permute`).

    Our RoPE rotates dimension i with dimension i + D/2 (two halves of each head); llama.cpp's LLAMA rope
    rotates adjacent pairs (2i, 2i+1). Reordering the output rows of W_q / W_k so that row (half, i) lands at
    (i, half) makes the two agree; scores q.k are unchanged because q and k are permuted the same way."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of `permute_qk` (GGUF interleaved -> HF halves)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_vocab(tokenizer_path: Path):
    """tokens (by id), token types, merges ("a b"), chat template — read from the shipped tokenizer files."""
    import gguf
    tj = json.loads((tokenizer_path / "tokenizer.json").read_text(encoding="utf-8"))
    tc = json.loads((tokenizer_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    model = tj["model"]
    if model.get("type") != "BPE":
        raise ConvertError(f"{tokenizer_path}/tokenizer.json is a {model.get('type')} tokenizer, not BPE")
    vocab = dict(model["vocab"])
    special = set()
    for t in tj.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
        if t.get("special"):
            special.add(t["content"])
    by_id = {i: tok for tok, i in vocab.items()}
    n = max(by_id) + 1
    if len(by_id) != n:
        raise ConvertError(f"{tokenizer_path}/tokenizer.json: token ids are not contiguous 0..{n - 1}")
    tokens = [by_id[i] for i in range(n)]
    added = {t["content"] for t in tj.get("added_tokens", [])}
    types = []
    for tok in tokens:
        if tok in special:
            types.append(gguf.TokenType.CONTROL)       # <|endoftext|>, <|im_start|>, <|im_end|>
        elif tok in added:
            types.append(gguf.TokenType.USER_DEFINED)  # <think>, <tool_call>, ...: plain text, one token
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    template = tc.get("chat_template")
    if not template and (tokenizer_path / "chat_template.jinja").is_file():
        template = (tokenizer_path / "chat_template.jinja").read_text(encoding="utf-8")
    return tokens, types, merges, template


def write_gguf(model: MiniMindForCausalLM, out_file: Path, outtype: str, tokenizer_path: Path) -> Path:
    import gguf
    config = model.config
    require_dense(config, "gguf export")
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
    # HF tensor names -> llama.cpp names (token_embd, blk.N.attn_q, ...) from gguf's own Llama mapping.
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tokens, types, merges, template = gguf_vocab(tokenizer_path)
    if len(tokens) != config.vocab_size:
        raise ConvertError(f"tokenizer has {len(tokens)} tokens but the model's vocab_size is {config.vocab_size}")

    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_type("model")
        writer.add_name("MiniMind")
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_vocab_size(config.vocab_size)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        if config.inference_rope_scaling:
            y = config.yarn_scaling
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(y["factor"]))
            writer.add_rope_scaling_orig_ctx_len(int(y["original_max_position_embeddings"]))
            writer.add_rope_scaling_yarn_beta_fast(float(y["beta_fast"]))
            writer.add_rope_scaling_yarn_beta_slow(float(y["beta_slow"]))
            # llama.cpp scales YaRN's cos/sin by the paper's 1 + 0.1 ln(factor) times `rope.scaling.attn_factor`;
            # MiniMind (attention_factor 1.0) applies no magnitude scaling, so store the factor that cancels it.
            # (llama.cpp's own converter copies attention_factor 1.0 here, which leaves the 1.28x in.)
            writer.add_rope_scaling_attn_factors(yarn_attn_factor(config))

        writer.add_tokenizer_model("gpt2")   # byte-level BPE
        writer.add_tokenizer_pre("gpt-2")    # ByteLevel(use_regex=True) = the GPT-2 split regex
        writer.add_token_list(tokens)
        writer.add_token_types([int(t) for t in types])
        writer.add_token_merges(merges)
        writer.add_bos_token_id(config.bos_token_id)
        writer.add_eos_token_id(config.eos_token_id)
        writer.add_pad_token_id(config.pad_token_id)
        writer.add_unk_token_id(config.pad_token_id)  # tokenizer_config: unk_token = <|endoftext|>
        writer.add_add_space_prefix(False)
        writer.add_add_bos_token(False)  # the chat template writes <|im_start|> itself
        writer.add_add_eos_token(False)
        if template:
            writer.add_chat_template(template)
        if hasattr(writer, "add_sampling_temp"):  # default sampling metadata: gguf >= 0.17 only, optional
            writer.add_sampling_temp(TEMPERATURE)
            writer.add_sampling_top_p(TOP_P)

        float_type = np.float16 if outtype == "f16" else np.float32
        n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
        for key, tensor in model.state_dict().items():
            if key == "lm_head.weight":
                # Tied to token_embd: llama.cpp's llama loader falls back to token_embd when output.weight is
                # absent (as convert_hf_to_gguf does for tied Llama checkpoints), so it is not stored twice.
                continue
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise RuntimeError(f"no GGUF name for tensor {key}")
            t = tensor.detach().float()
            if key.endswith("self_attn.q_proj.weight"):
                t = permute_qk(t, n_head)
            elif key.endswith("self_attn.k_proj.weight"):
                t = permute_qk(t, n_kv)
            # Norm vectors stay f32 in f16 files (as llama.cpp's converter does): tiny, and precision-sensitive.
            data = t.numpy().astype(np.float32 if t.dim() == 1 else float_type)
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_file)  # the .gguf appears complete or not at all
    finally:
        writer.close()  # idempotent
        tmp.unlink(missing_ok=True)
    return out_file


def yarn_attn_factor(config: MiniMindConfig) -> float:
    y = config.yarn_scaling
    return float(y["attention_factor"]) / (1.0 + 0.1 * math.log(float(y["factor"])))


# Messages-based ChatML for ollama's Go templates (ollama does not run the Jinja template from the GGUF).
OLLAMA_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""


def write_modelfile(gguf_file: Path) -> Path:
    text = (f"# ollama create minimind -f Modelfile && ollama run minimind\n"
            f"FROM ./{gguf_file.name}\n\n"
            f'TEMPLATE """{OLLAMA_TEMPLATE}"""\n\n'
            f'PARAMETER stop "<|im_end|>"\n'
            f'PARAMETER stop "<|endoftext|>"\n'
            f"PARAMETER temperature {TEMPERATURE}\n"
            f"PARAMETER top_p {TOP_P}\n")
    path = gguf_file.parent / "Modelfile"
    atomic_write_text(path, text)
    return path


# ================================================================================================================
# CLI
# ================================================================================================================
def add_source_args(p: argparse.ArgumentParser):
    p.add_argument("--weight", type=str, default="full_sft", help="stage prefix: {save_dir}/{weight}_{hidden}.pth")
    p.add_argument("--save_dir", type=str, default=str(DEFAULT_OUT), help="folder holding the .pth")
    p.add_argument("--pth", type=str, default=None, help="explicit .pth path (overrides --weight/--save_dir)")
    p.add_argument("--hidden_size", type=int, default=512)
    p.add_argument("--num_hidden_layers", type=int, default=8)
    p.add_argument("--num_attention_heads", type=int, default=8)
    p.add_argument("--num_key_value_heads", type=int, default=2)
    p.add_argument("--use_moe", type=int, default=0, choices=[0, 1])
    p.add_argument("--inference_rope_scaling", action="store_true",
                   help="export with YaRN (16x: 2048 -> 32768 positions), like the original's flag")
    p.add_argument("--tokenizer_path", type=str, default=str(DEFAULT_TOKENIZER))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="MiniMind model format conversion",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("torch2hf", help=".pth -> transformers directory with remote code (dense or MoE)")
    add_source_args(p)
    p.add_argument("--out_dir", type=str, default=None, help="default: {save_dir}/{weight}_{hidden}[_moe]-hf")
    p.add_argument("--dtype", type=str, default="float16", choices=list(DTYPES))

    p = sub.add_parser("hf2torch", help="transformers directory (MiniMind or Llama) -> native half .pth")
    p.add_argument("--hf_dir", type=str, required=True)
    p.add_argument("--out_path", type=str, default=None,
                   help="default: {save_dir}/{weight}_{hidden}[_moe].pth (never overwritten without --force)")
    p.add_argument("--weight", type=str, default="full_sft")
    p.add_argument("--save_dir", type=str, default=str(DEFAULT_OUT))
    p.add_argument("--force", action="store_true", help="overwrite an existing .pth")

    p = sub.add_parser("torch2llama", help=".pth -> plain LlamaForCausalLM directory (dense only)")
    add_source_args(p)
    p.add_argument("--out_dir", type=str, default=None, help="default: {save_dir}/{weight}_{hidden}-llama")
    p.add_argument("--dtype", type=str, default="float16", choices=list(DTYPES))

    p = sub.add_parser("gguf", help=".pth -> .gguf (llama architecture) + ollama Modelfile (dense only)")
    add_source_args(p)
    p.add_argument("--out_file", type=str, default=None, help="default: {save_dir}/{weight}_{hidden}.gguf")
    p.add_argument("--outtype", type=str, default="f16", choices=["f16", "f32"])
    return parser


def default_stem(args, config: MiniMindConfig) -> str:
    return Path(args.pth).stem if args.pth else weight_name(args.weight, config)


def run(args) -> None:
    if args.command == "hf2torch":
        hf_dir = Path(args.hf_dir)
        if args.out_path:
            out_path = Path(args.out_path)
        else:
            cfg = json.loads((hf_dir / "config.json").read_text()) if (hf_dir / "config.json").is_file() else {}
            moe = "_moe" if cfg.get("use_moe") else ""
            out_path = Path(args.save_dir) / f"{args.weight}_{cfg.get('hidden_size', 'unknown')}{moe}.pth"
        if out_path.exists() and not args.force:
            raise ConvertError(f"{out_path} exists; pass --force to overwrite it or --out_path to write elsewhere")
        config = hf2torch(hf_dir, out_path)
        print(f"wrote {out_path}")
        print(f"use it: python trainer/train_full_sft.py --from_weight {out_path} --hidden_size "
              f"{config.hidden_size} --num_hidden_layers {config.num_hidden_layers} --use_moe {int(config.use_moe)}")
        return

    config = native_config(args)
    if args.command in ("torch2llama", "gguf"):
        require_dense(config, args.command)  # before loading anything
    model = load_native(args)
    tokenizer_path = Path(args.tokenizer_path)
    stem = default_stem(args, config)
    save_dir = Path(args.save_dir)

    if args.command == "torch2hf":
        out_dir = Path(args.out_dir) if args.out_dir else save_dir / f"{stem}-hf"
        torch2hf(model, out_dir, DTYPES[args.dtype], tokenizer_path)
        print(f"wrote {out_dir} ({args.dtype}, MiniMind remote code)")
        print("load it (transformers):\n"
              f"  AutoModelForCausalLM.from_pretrained('{out_dir}', trust_remote_code=True); "
              f"AutoTokenizer.from_pretrained('{out_dir}')")
        print("vLLM / llama.cpp do not know the MiniMind architecture: for them export the dense model with "
              "`torch2llama` or `gguf`." if not config.use_moe else
              "vLLM / llama.cpp / ollama: MoE MiniMind has no native implementation there; use transformers.")
    elif args.command == "torch2llama":
        out_dir = Path(args.out_dir) if args.out_dir else save_dir / f"{stem}-llama"
        torch2llama(model, out_dir, DTYPES[args.dtype], tokenizer_path)
        print(f"wrote {out_dir} ({args.dtype}, LlamaForCausalLM, no remote code)")
        print("serve it:")
        print(f"  vllm serve {out_dir} --served-model-name minimind"
              + ("" if not config.inference_rope_scaling else " --max-model-len 32768"))
        print(f"  python llama.cpp/convert_hf_to_gguf.py {out_dir} --outfile {stem}.gguf --outtype f16"
              "   # or, with the tokenizer settings filled in: scripts/convert_model.py gguf")
        if config.inference_rope_scaling:
            print("  note: YaRN here uses attention_factor 1.0; runtimes that ignore it and apply the YaRN paper's "
                  f"1 + 0.1 ln(16) magnitude (older vLLM) need rope_scaling.attn_factor = "
                  f"{yarn_attn_factor(config):.6f} added to config.json")
    elif args.command == "gguf":
        out_file = Path(args.out_file) if args.out_file else save_dir / f"{stem}.gguf"
        write_gguf(model, out_file, args.outtype, tokenizer_path)
        modelfile = write_modelfile(out_file)
        print(f"wrote {out_file} ({args.outtype}) and {modelfile}")
        print("run it:")
        print(f"  llama-cli -m {out_file} -cnv                # chat; ChatML is detected from the embedded template")
        print(f"  llama-server -m {out_file} --port 8080      # OpenAI-compatible API on http://localhost:8080/v1")
        print(f"  cd {out_file.parent} && ollama create minimind -f Modelfile && ollama run minimind")


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ConvertError, FileNotFoundError, WeightLoadError) as e:
        # One line: the first line of the message is the actionable part.
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
