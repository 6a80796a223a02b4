"""Export MiniMind weights (both generations) to the formats other tools load, and import them back.

Subcommands (each prints how to run the result):

  torch2hf     out/{weight}_{hidden}[_moe].pth -> a transformers directory with MiniMind's own code (auto_map +
               model_minimind.py, trust_remote_code=True). Every MiniMind2 and minimind-3 model, dense or MoE.
  torch2transformers
               -> the plain transformers class with the same math, no remote code; what vLLM and llama.cpp's
               convert_hf_to_gguf.py read:
                 MiniMind2 dense      LlamaForCausalLM    (RMSNorm, rotate_half RoPE, GQA, SwiGLU, tied embeddings)
                 minimind-3 dense     Qwen3ForCausalLM    (the same plus QK-norm and an explicit head_dim)
                 minimind-3 MoE       Qwen3MoeForCausalLM (softmax router, normalised top-k, no shared expert)
               MiniMind2-MoE (its shared expert) has no plain class: use torch2hf.
  torch2llama  MiniMind2's name for torch2transformers (dense MiniMind2 only).
  hf2torch     a transformers directory (any of the above, or upstream's own minimind) -> a native half .pth.
  gguf         -> one .gguf file (BPE tokenizer and chat template embedded) plus an ollama Modelfile beside it,
               written directly with the `gguf` package: llama.cpp architecture "llama" for MiniMind2 dense,
               "qwen3" / "qwen3moe" for minimind-3.

The model shape comes from --preset (minimind2-small by default) and the size flags, as in training:

    python scripts/convert_model.py torch2hf --weight full_sft --hidden_size 512
    python scripts/convert_model.py torch2hf --weight full_sft --preset minimind2-moe --out_dir MiniMind2-MoE
    python scripts/convert_model.py torch2transformers --weight full_sft --preset minimind3        # Qwen3
    python scripts/convert_model.py torch2transformers --weight full_sft --preset minimind3-moe    # Qwen3-MoE
    python scripts/convert_model.py hf2torch --hf_dir out/full_sft_768-qwen3 --out_path out/full_sft_768.pth
    python scripts/convert_model.py torch2llama --weight full_sft --hidden_size 512 [--inference_rope_scaling]
    python scripts/convert_model.py gguf --weight full_sft --preset minimind3 \
        --tokenizer_path ../minimind3_tokenizer --outtype f16

minimind-3 weights go with upstream's minimind-3 tokenizer: pass it with --tokenizer_path (the exports embed
the tokenizer they are given).

User mistakes (missing file, weights that do not fit the flags, an export the architecture has no class for, a
non-empty output folder that is not a model) end with one `error:` line and exit status 2.

Notes on the runtimes:
  * llama.cpp's convert_hf_to_gguf.py refuses MiniMind's tokenizer ("BPE pre-tokenizer was not recognized":
    its hash is not in llama.cpp's table). `gguf` here writes what it would write with pre = "gpt-2" (same
    tensors, Q/K permutation for llama, token types, merges), so use it instead.
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
from model.errors import USER_ERRORS, UserError  # noqa: E402
from model.model_minimind import (TRANSFORMERS_V5, YARN_ROPE_SCALING, MiniMindConfig,  # noqa: E402
                                  MiniMindForCausalLM)
from model.checkpoint import (DEFAULT_OUT, DEFAULT_TOKENIZER, describe_model, describe_state,  # noqa: E402
                              half_state_dict, load_state_dict_file, preset_for_state, weight_name)
from model.config_flags import add_model_size_args, model_config_from_args  # noqa: E402

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Sampling defaults shipped with every export (generation_config.json, Modelfile): MiniMind's own eval defaults.
TEMPERATURE, TOP_P = 0.85, 0.85
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # control tokens; tag tokens are user-defined


class ConvertError(UserError):
    """A user mistake: reported as one `error:` line, never a traceback."""


# ================================================================================================================
# Native weights in
# ================================================================================================================
def native_config(args) -> MiniMindConfig:
    """--preset + size flags, as every training and inference script reads them."""
    return model_config_from_args(args, inference_rope_scaling=bool(args.inference_rope_scaling))


def source_path(args, config: MiniMindConfig) -> Path:
    if args.pth:
        return Path(args.pth)
    return Path(args.save_dir) / f"{weight_name(args.weight, config)}.pth"


def check_state_dict(state: dict, model, path) -> None:
    """strict=True semantics (same keys, same shapes) with a one-line message saying what differs."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return
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
        f"{path} does not match MiniMind({describe_model(model.config)}): {'; '.join(parts)}; "
        f"{describe_state(state, model.config.num_attention_heads)}")


def load_native(args) -> MiniMindForCausalLM:
    """Build the model from the flags and load the .pth strictly, in fp32 (the export casts afterwards)."""
    config = native_config(args)
    path = source_path(args, config)
    if not path.is_file():
        hint = "" if args.pth else " (check --weight, --save_dir, --preset, --hidden_size and --use_moe, or pass --pth)"
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
          f"{describe_model(config)})")
    return model.float().eval()


def plain_arch(config: MiniMindConfig, what: str) -> str:
    """The transformers / llama.cpp architecture with exactly this model's math: "llama", "qwen3" or "qwen3_moe".

    MiniMind2 without QK-norm is Llama; with QK-norm (minimind-3) it is Qwen3, and its MoE (softmax router,
    every layer sparse, no shared expert) is Qwen3-MoE. Anything else has no plain class: a ConvertError."""
    if not config.use_moe:
        return "qwen3" if config.qk_norm else "llama"
    if not config.qk_norm or config.n_shared_experts > 0:
        raise ConvertError(f"{what} supports dense MiniMind2 (Llama), minimind-3 and minimind-3-MoE (Qwen3 / "
                           f"Qwen3-MoE) only: this MoE model (shared experts={config.n_shared_experts}, QK-norm="
                           f"{int(config.qk_norm)}) has no plain equivalent; export it with `torch2hf` "
                           f"(trust_remote_code) instead")
    return "qwen3_moe"


def require_dense(config: MiniMindConfig, what: str) -> None:
    """torch2llama: MiniMind2 dense only (minimind-3 exports to Qwen3 with torch2transformers)."""
    arch = plain_arch(config, what)
    if arch != "llama":
        raise ConvertError(f"{what} supports dense MiniMind2 only: this is a minimind-3 model (QK-norm), whose "
                           f"plain class is {HF_CLASS[arch]}; export it with `torch2transformers`")


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


HF_CLASS = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}


def hf_class(arch: str):
    import transformers
    return getattr(transformers, HF_CLASS[arch])


def rope_from_hf_config(hc) -> dict:
    """The rope settings of a transformers config: `rope_parameters` on transformers 5, `rope_theta` +
    `rope_scaling` on 4.x (and in configs written for it)."""
    rope = dict(getattr(hc, "rope_parameters", None) or getattr(hc, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(hc, "rope_theta", None) or 1e6)
    return rope


def minimind_config_from_plain(hc, arch: str) -> MiniMindConfig:
    """The MiniMind config equivalent to a Llama / Qwen3 / Qwen3-MoE config (refuses anything MiniMind is not)."""
    rope = rope_from_hf_config(hc)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    yarn = rope_type == "yarn"
    if rope_type not in ("default", "yarn"):
        raise ConvertError(f"unsupported rope_type {rope_type!r} in the {arch} config")
    if yarn:
        for k, v in YARN_ROPE_SCALING.items():
            if k != "type" and float(rope.get(k, v)) != float(v):
                raise ConvertError(f"the {arch} config's YaRN {k}={rope.get(k)} differs from MiniMind's {v}")
    head_dim = getattr(hc, "head_dim", None) or hc.hidden_size // hc.num_attention_heads
    if arch == "llama" and head_dim != hc.hidden_size // hc.num_attention_heads:
        raise ConvertError(f"head_dim {head_dim} != hidden_size / num_attention_heads: not a MiniMind2 model")
    if not hc.tie_word_embeddings or getattr(hc, "attention_bias", False) or getattr(hc, "mlp_bias", False):
        raise ConvertError(f"the {arch} model has untied embeddings or biases: not a MiniMind model")
    if getattr(hc, "use_sliding_window", False):
        raise ConvertError(f"the {arch} model uses sliding-window attention: not a MiniMind model")
    kw = dict(hidden_size=hc.hidden_size, num_hidden_layers=hc.num_hidden_layers,
              num_attention_heads=hc.num_attention_heads, num_key_value_heads=hc.num_key_value_heads,
              head_dim=head_dim, intermediate_size=hc.intermediate_size, vocab_size=hc.vocab_size,
              max_position_embeddings=hc.max_position_embeddings, rms_norm_eps=hc.rms_norm_eps,
              rope_theta=float(rope["rope_theta"]), inference_rope_scaling=yarn, hidden_act=hc.hidden_act,
              qk_norm=arch != "llama")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(getattr(hc, key, None), int):
            kw[key] = getattr(hc, key)
    if arch == "qwen3_moe":
        if getattr(hc, "decoder_sparse_step", 1) != 1 or getattr(hc, "mlp_only_layers", None):
            raise ConvertError("the Qwen3-MoE model has dense layers between its MoE layers: not a MiniMind model")
        kw.update(use_moe=True, n_routed_experts=hc.num_experts, num_experts_per_tok=hc.num_experts_per_tok,
                  moe_intermediate_size=hc.moe_intermediate_size, norm_topk_prob=hc.norm_topk_prob,
                  n_shared_experts=0, aux_loss_type="switch", aux_loss_alpha=hc.router_aux_loss_coef)
    return MiniMindConfig(**kw)


def minimind_config_from_llama(lc) -> MiniMindConfig:
    """The MiniMind config equivalent to a LlamaConfig written by torch2llama (refuses anything else)."""
    return minimind_config_from_plain(lc, "llama")


# transformers 5 keeps a Qwen3-MoE layer's experts as two stacked tensors (gate and up concatenated); checkpoints
# on disk, transformers 4.x and MiniMind keep one module per expert. These two functions convert between them
# (by the key names the target model has, so the same code runs on every version).
FUSED_GATE_UP, FUSED_DOWN = "mlp.experts.gate_up_proj", "mlp.experts.down_proj"


def to_hf_state_dict(state: dict, hf_keys) -> dict:
    """MiniMind's state dict -> the target transformers model's keys (only the expert layout can differ)."""
    hf_keys = set(hf_keys)
    if not any(k.endswith(FUSED_GATE_UP) for k in hf_keys):
        return dict(state)
    out = {k: v for k, v in state.items() if ".mlp.experts." not in k}
    for key in hf_keys:
        if key.endswith(FUSED_GATE_UP) or key.endswith(FUSED_DOWN):
            prefix = key[: -len("gate_up_proj" if key.endswith(FUSED_GATE_UP) else "down_proj")]
            n = len({k for k in state if k.startswith(prefix) and k.endswith(".down_proj.weight")})
            if key.endswith(FUSED_GATE_UP):
                out[key] = torch.stack([torch.cat([state[f"{prefix}{e}.gate_proj.weight"],
                                                   state[f"{prefix}{e}.up_proj.weight"]], 0) for e in range(n)])
            else:
                out[key] = torch.stack([state[f"{prefix}{e}.down_proj.weight"] for e in range(n)])
    return out


def from_hf_state_dict(state: dict) -> dict:
    """A transformers model's state dict -> MiniMind's keys (per-expert modules)."""
    out = {}
    for key, value in state.items():
        if key.endswith(FUSED_GATE_UP):
            prefix = key[: -len("gate_up_proj")]
            gate, up = value.chunk(2, dim=1)  # (E, 2I, H): gate rows first, then up (transformers' layout)
            for e in range(value.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = gate[e]
                out[f"{prefix}{e}.up_proj.weight"] = up[e]
        elif key.endswith(FUSED_DOWN):
            prefix = key[: -len("down_proj")]
            for e in range(value.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = value[e]
        else:
            out[key] = value
    return out


def hf2torch(hf_dir: Path, out_path: Path) -> MiniMindConfig:
    """Load a torch2hf / torch2transformers / torch2llama directory (or upstream's own transformers export) and
    write its weights as a native half-precision .pth."""
    if not (hf_dir / "config.json").is_file():
        raise ConvertError(f"no config.json in {hf_dir} (--hf_dir must be a transformers model directory)")
    model_type = json.loads((hf_dir / "config.json").read_text()).get("model_type")
    if model_type == "minimind":
        # Our own class, not trust_remote_code: the directory's copy of model_minimind.py is not executed.
        loaded, info = MiniMindForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                           output_loading_info=True)
        config = loaded.config
    elif model_type in HF_CLASS:
        loaded, info = hf_class(model_type).from_pretrained(str(hf_dir), dtype=torch.float32,
                                                            output_loading_info=True)
        config = minimind_config_from_plain(loaded.config, model_type)
    else:
        raise ConvertError(f"{hf_dir}: model_type {model_type!r} is not one of 'minimind', "
                           f"{', '.join(repr(a) for a in HF_CLASS)}")
    # from_pretrained only warns about missing / unexpected weights (and initialises missing ones randomly).
    problems = {k: sorted(v) for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys",
                                                                      "mismatched_keys", "error_msgs")}
    if problems:
        raise ConvertError(f"{hf_dir} does not load cleanly: " + "; ".join(
            f"{k}: {len(v)} (e.g. {v[0]})" for k, v in problems.items()))
    target = MiniMindForCausalLM(config)
    state = from_hf_state_dict(loaded.state_dict())
    check_state_dict(state, target, hf_dir)
    target.load_state_dict(state, strict=True)
    atomic_save(half_state_dict(target), out_path)
    return config


# ================================================================================================================
# torch2transformers / torch2llama: a plain transformers class (Llama, Qwen3, Qwen3-MoE)
# ================================================================================================================
def llama_rope_parameters(config: MiniMindConfig) -> dict:
    if config.inference_rope_scaling:
        y = config.yarn_scaling
        return {"rope_type": "yarn", "rope_theta": float(config.rope_theta), "factor": float(y["factor"]),
                "original_max_position_embeddings": int(y["original_max_position_embeddings"]),
                "beta_fast": float(y["beta_fast"]), "beta_slow": float(y["beta_slow"]),
                "attention_factor": float(y["attention_factor"])}
    return {"rope_type": "default", "rope_theta": float(config.rope_theta)}


def rope_kwargs(config: MiniMindConfig) -> dict:
    """transformers 5 reads `rope_parameters`; 4.x reads `rope_theta` + `rope_scaling` (and ignores the other)."""
    rp = llama_rope_parameters(config)
    if TRANSFORMERS_V5:
        return {"rope_parameters": rp}
    return {"rope_theta": rp["rope_theta"],
            "rope_scaling": {k: v for k, v in rp.items() if k != "rope_theta"} if config.inference_rope_scaling
            else None}


def plain_config(config: MiniMindConfig, dtype: torch.dtype, arch: str):
    """The LlamaConfig / Qwen3Config / Qwen3MoeConfig with this model's shape."""
    import transformers
    kw = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
              intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
              num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
              head_dim=config.head_dim, hidden_act=config.hidden_act,
              max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
              tie_word_embeddings=True, attention_bias=False, bos_token_id=config.bos_token_id,
              eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
              dtype=str(dtype).replace("torch.", ""), architectures=[HF_CLASS[arch]], **rope_kwargs(config))
    if arch == "llama":
        return transformers.LlamaConfig(mlp_bias=False, **kw)
    if arch == "qwen3":
        return transformers.Qwen3Config(use_sliding_window=False, **kw)
    return transformers.Qwen3MoeConfig(
        use_sliding_window=False, num_experts=config.n_routed_experts,
        num_experts_per_tok=config.num_experts_per_tok, moe_intermediate_size=config.moe_intermediate_size,
        norm_topk_prob=config.norm_topk_prob, router_aux_loss_coef=config.aux_loss_alpha, decoder_sparse_step=1,
        mlp_only_layers=[], **kw)


def llama_config(config: MiniMindConfig, dtype: torch.dtype):
    return plain_config(config, dtype, "llama")


def add_legacy_config_keys(config_json: Path, config: MiniMindConfig, arch: str = "llama") -> None:
    """Write the config.json keys that every transformers version (and vLLM / llama.cpp's converter) reads:

    * `rope_parameters` (transformers 5) and `rope_theta` / `rope_scaling` at the top level (the transformers-4
      spelling); transformers 5 ignores the latter in favour of `rope_parameters` (checked by the tests: the
      reloaded config is unchanged);
    * Qwen3-MoE: transformers 5 saves the expert count as `num_local_experts`, a name 4.x does not read (it would
      build the default 128 experts); `num_experts` is what 4.x, vLLM and llama.cpp read, and 5.x maps it back."""
    d = json.loads(config_json.read_text())
    rp = llama_rope_parameters(config)
    d["rope_parameters"] = rp  # what transformers 5 writes itself; written here too when exporting on 4.x
    d["rope_theta"] = float(config.rope_theta)
    if config.inference_rope_scaling:
        d["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
    if arch == "qwen3_moe":
        d.pop("num_local_experts", None)
        d["num_experts"] = config.n_routed_experts
    atomic_write_text(config_json, json.dumps(d, indent=2, sort_keys=True) + "\n")


def add_legacy_rope_keys(config_json: Path, config: MiniMindConfig) -> None:
    add_legacy_config_keys(config_json, config, "llama")


def torch2transformers(model: MiniMindForCausalLM, out_dir: Path, dtype: torch.dtype, tokenizer_path: Path,
                       arch: str = None) -> Path:
    """Write the plain transformers class with this model's math (see `plain_arch`), no remote code."""
    arch = arch or plain_arch(model.config, "torch2transformers")
    hf = hf_class(arch)(plain_config(model.config, dtype, arch))
    # The parity argument in one line: every MiniMind key exists in the transformers model with the same shape,
    # and vice versa (up to transformers 5's stacking of the experts).
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), hf.state_dict().keys()), strict=True)
    hf = hf.to(dtype).eval()
    tmp = prepare_out_dir(out_dir)
    try:
        hf.generation_config = generation_config(model.config)
        hf.save_pretrained(str(tmp))
        add_legacy_config_keys(tmp / "config.json", model.config, arch)
        copy_tokenizer(tokenizer_path, tmp)
        finish_out_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def torch2llama(model: MiniMindForCausalLM, out_dir: Path, dtype: torch.dtype, tokenizer_path: Path) -> Path:
    require_dense(model.config, "torch2llama")
    return torch2transformers(model, out_dir, dtype, tokenizer_path, "llama")


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


def gguf_tensors(model: MiniMindForCausalLM, gguf_arch):
    """(HF-style key, tensor) pairs as llama.cpp wants them for `gguf_arch`, in state-dict order.

    llama: Q/K rows permuted for its adjacent-pair RoPE. qwen3 / qwen3moe: llama.cpp runs them with NEOX RoPE, the
    rotate_half layout we use, so Q/K stay as they are; a MoE layer's experts become three stacked tensors
    `mlp.experts.{gate,up,down}_proj.weight` of shape (experts, out, in) (ffn_{gate,up,down}_exps)."""
    import gguf
    config = model.config
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    state = model.state_dict()
    stacked = set()
    for key, tensor in state.items():
        if key == "lm_head.weight":
            # Tied to token_embd: llama.cpp's loaders fall back to token_embd when output.weight is absent (as
            # convert_hf_to_gguf does for tied checkpoints), so it is not stored twice.
            continue
        t = tensor.detach().float()
        if ".mlp.experts." in key:
            prefix, rest = key.split(".mlp.experts.")
            proj = rest.split(".", 1)[1]  # gate_proj.weight
            name = f"{prefix}.mlp.experts.{proj}"
            if name in stacked:
                continue
            stacked.add(name)
            n = config.n_routed_experts
            yield name, torch.stack([state[f"{prefix}.mlp.experts.{e}.{proj}"].float() for e in range(n)])
            continue
        if gguf_arch == gguf.MODEL_ARCH.LLAMA:
            if key.endswith("self_attn.q_proj.weight"):
                t = permute_qk(t, n_head)
            elif key.endswith("self_attn.k_proj.weight"):
                t = permute_qk(t, n_kv)
        yield key, t


GGUF_ARCH = {"llama": "LLAMA", "qwen3": "QWEN3", "qwen3_moe": "QWEN3MOE"}


def write_gguf(model: MiniMindForCausalLM, out_file: Path, outtype: str, tokenizer_path: Path) -> Path:
    import gguf
    config = model.config
    gguf_arch = getattr(gguf.MODEL_ARCH, GGUF_ARCH[plain_arch(config, "gguf export")])
    arch = gguf.MODEL_ARCH_NAMES[gguf_arch]
    # HF tensor names -> llama.cpp names (token_embd, blk.N.attn_q, ...) from gguf's own mapping for the arch.
    names = gguf.get_tensor_name_map(gguf_arch, config.num_hidden_layers)
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
        if config.use_moe:  # qwen3moe: top-k of n experts, softmax router, top-k weights normalised (its only mode)
            if not config.norm_topk_prob:
                raise ConvertError("llama.cpp's qwen3moe always normalises the top-k router weights; this model "
                                   "has norm_topk_prob=False")
            writer.add_expert_count(config.n_routed_experts)
            writer.add_expert_used_count(config.num_experts_per_tok)
            writer.add_expert_feed_forward_length(config.moe_intermediate_size)
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
        for key, t in gguf_tensors(model, gguf_arch):
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise RuntimeError(f"no GGUF name for tensor {key}")
            # Norm vectors and the MoE router stay f32 in f16 files (as llama.cpp's converter does): tiny, and
            # precision-sensitive (the router picks one expert per token: a rounding could flip the choice).
            keep_f32 = t.dim() == 1 or key.endswith("mlp.gate.weight")
            writer.add_tensor(name, t.numpy().astype(np.float32 if keep_f32 else float_type))
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
    add_model_size_args(p)  # --preset, --hidden_size, --num_hidden_layers, ..., --use_moe
    p.add_argument("--inference_rope_scaling", action="store_true",
                   help="export with YaRN (16x: 2048 -> 32768 positions), like the original's flag")
    p.add_argument("--tokenizer_path", type=str, default=str(DEFAULT_TOKENIZER),
                   help="the tokenizer to ship (minimind-3 weights: upstream's minimind-3 tokenizer)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="MiniMind model format conversion",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("torch2hf", help=".pth -> transformers directory with remote code (every MiniMind)")
    add_source_args(p)
    p.add_argument("--out_dir", type=str, default=None, help="default: {save_dir}/{weight}_{hidden}[_moe]-hf")
    p.add_argument("--dtype", type=str, default="float16", choices=list(DTYPES))

    p = sub.add_parser("hf2torch", help="transformers directory (MiniMind, Llama, Qwen3, Qwen3-MoE) -> native .pth")
    p.add_argument("--hf_dir", type=str, required=True)
    p.add_argument("--out_path", type=str, default=None,
                   help="default: {save_dir}/{weight}_{hidden}[_moe].pth (never overwritten without --force)")
    p.add_argument("--weight", type=str, default="full_sft")
    p.add_argument("--save_dir", type=str, default=str(DEFAULT_OUT))
    p.add_argument("--force", action="store_true", help="overwrite an existing .pth")

    p = sub.add_parser("torch2transformers", help=".pth -> plain Llama (MiniMind2) / Qwen3 / Qwen3-MoE "
                                                  "(minimind-3) directory, no remote code")
    add_source_args(p)
    p.add_argument("--out_dir", type=str, default=None,
                   help="default: {save_dir}/{weight}_{hidden}[_moe]-{llama,qwen3,qwen3_moe}")
    p.add_argument("--dtype", type=str, default="float16", choices=list(DTYPES))

    p = sub.add_parser("torch2llama", help=".pth -> plain LlamaForCausalLM directory (dense MiniMind2 only)")
    add_source_args(p)
    p.add_argument("--out_dir", type=str, default=None, help="default: {save_dir}/{weight}_{hidden}-llama")
    p.add_argument("--dtype", type=str, default="float16", choices=list(DTYPES))

    p = sub.add_parser("gguf", help=".pth -> .gguf (llama / qwen3 / qwen3moe architecture) + ollama Modelfile")
    add_source_args(p)
    p.add_argument("--out_file", type=str, default=None, help="default: {save_dir}/{weight}_{hidden}[_moe].gguf")
    p.add_argument("--outtype", type=str, default="f16", choices=["f16", "f32"])
    return parser


def default_stem(args, config: MiniMindConfig) -> str:
    return Path(args.pth).stem if args.pth else weight_name(args.weight, config)


def preset_flags(state: dict) -> str:
    """`--preset NAME [size flags]` for a state dict, or the generic flags when no preset builds it."""
    found = preset_for_state(state)
    if found is None:
        return describe_state(state)
    name, flags = found
    return f"--preset {name}" + "".join(f" --{k} {v}" for k, v in flags.items())


def run(args) -> None:
    if args.command == "hf2torch":
        hf_dir = Path(args.hf_dir)
        if args.out_path:
            out_path = Path(args.out_path)
        else:
            cfg = json.loads((hf_dir / "config.json").read_text()) if (hf_dir / "config.json").is_file() else {}
            moe = "_moe" if cfg.get("use_moe") or cfg.get("model_type") == "qwen3_moe" else ""
            out_path = Path(args.save_dir) / f"{args.weight}_{cfg.get('hidden_size', 'unknown')}{moe}.pth"
        if out_path.exists() and not args.force:
            raise ConvertError(f"{out_path} exists; pass --force to overwrite it or --out_path to write elsewhere")
        config = hf2torch(hf_dir, out_path)
        print(f"wrote {out_path} ({describe_model(config)})")
        flags = preset_flags(load_state_dict_file(out_path))
        print(f"use it: python trainer/train_full_sft.py --from_weight {out_path} {flags}")
        return

    config = native_config(args)
    if args.command == "torch2llama":
        require_dense(config, args.command)  # before loading anything
    elif args.command in ("torch2transformers", "gguf"):
        plain_arch(config, args.command)
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
        if config.use_moe and config.n_shared_experts > 0:
            print("vLLM / llama.cpp / ollama: MiniMind2's MoE (shared expert) has no native implementation there; "
                  "use transformers.")
        else:
            print("vLLM / llama.cpp do not know the MiniMind architecture: for them export with "
                  "`torch2transformers` or `gguf`.")
    elif args.command in ("torch2llama", "torch2transformers"):
        arch = plain_arch(config, args.command)
        out_dir = Path(args.out_dir) if args.out_dir else save_dir / f"{stem}-{arch}"
        torch2transformers(model, out_dir, DTYPES[args.dtype], tokenizer_path, arch)
        print(f"wrote {out_dir} ({args.dtype}, {HF_CLASS[arch]}, no remote code)")
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
    except USER_ERRORS as e:
        # One line: the first line of the message is the actionable part.
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
