"""Model files: default paths, weight and resume file names, strict weight loading, the tokenizer, --preset.

Names follow the original MiniMind: `{save_dir}/{stage}_{hidden}[_moe].pth` for weights and
`{checkpoint_dir}/{stage}_{hidden}[_moe]_resume.pth` for resume state, for both generations (as upstream:
`full_sft_768.pth` may hold a MiniMind2 or a minimind-3, so the shape comes from --preset). Loading is always
`torch.load(weights_only=True)` + `load_state_dict(strict=True)`; a file that does not fit the model raises
`WeightLoadError` with one actionable message naming the preset (and size flags) the file needs, read from its
tensor shapes, instead of a key dump.
"""
from pathlib import Path

import torch

from model.errors import UserError
from model.model_minimind import PRESETS as MODEL_PRESETS
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = ROOT / "model"
DEFAULT_OUT = ROOT / "out"
DEFAULT_CHECKPOINTS = ROOT / "checkpoints"


PRESETS = tuple(MODEL_PRESETS)  # minimind2-small (default), minimind2, minimind2-moe, minimind3, minimind3-moe
SIZE_FLAGS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "use_moe")


def add_model_size_args(parser):
    """--preset and the size flags every training, inference, eval and conversion script shares.

    The size flags default to None: unset, they come from --preset (or, without one, from MiniMindConfig's
    defaults, i.e. minimind2-small); set, they override it (`--preset minimind3 --num_hidden_layers 4`)."""
    p = parser
    p.add_argument("--preset", type=str, default=None, choices=PRESETS,
                   help="model shape: minimind2-small (default, 25.8M), minimind2 (104M), minimind2-moe (145M), "
                        "minimind3 (63.9M), minimind3-moe (198M, ~64M active); size flags below override it")
    p.add_argument("--hidden_size", type=int, default=None, help="default: the preset's (512 without one)")
    p.add_argument("--num_hidden_layers", type=int, default=None, help="default: the preset's (8)")
    p.add_argument("--num_attention_heads", type=int, default=None, help="default: the preset's (8)")
    p.add_argument("--num_key_value_heads", type=int, default=None, help="default: the preset's (2)")
    p.add_argument("--use_moe", type=int, default=None, choices=[0, 1], help="default: the preset's (0)")
    return p


class ModelConfigError(UserError, ValueError):
    """--preset / size flags that make no model (e.g. a hidden size the head count does not divide)."""


def model_config_from_args(args, **overrides) -> MiniMindConfig:
    """The model config from --preset and the size flags (unset flags keep the preset's value; no --preset is
    minimind2-small, MiniMindConfig's defaults). `overrides` are further config fields set by the caller."""
    kw = {k: getattr(args, k, None) for k in SIZE_FLAGS}
    kw = {k: v for k, v in kw.items() if v is not None}
    if "use_moe" in kw:
        kw["use_moe"] = bool(kw["use_moe"])
    kw.update(overrides)
    preset = getattr(args, "preset", None) or "minimind2-small"
    try:
        return MiniMindConfig.from_preset(preset, **kw)
    except ValueError as e:
        flags = " ".join(f"--{k} {int(v) if isinstance(v, bool) else v}" for k, v in kw.items() if k in SIZE_FLAGS)
        raise ModelConfigError(f"--preset {preset} {flags}: {e}".replace("  ", " ")) from None


# ---------------------------------------------------------------------------------------------------------------
# What a weight file is, from its tensor shapes
# ---------------------------------------------------------------------------------------------------------------
def state_shapes(config: MiniMindConfig) -> dict:
    """{key: shape} of a model built from `config`, on the meta device (no memory, no init time)."""
    with torch.device("meta"):
        model = MiniMindForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def preset_for_state(state: dict, heads_hint=None):
    """(preset, {size flag: value}) of the preset that builds a model with exactly these keys and shapes, with the
    fewest size flags on top; None when no preset does (custom intermediate size, another vocabulary, ...).

    QK-norm files (minimind-3) give their head_dim, hence both head counts. MiniMind2 files do not: only the
    ratio of key/value heads to query heads shows in the shapes, so the query head count is `heads_hint` (the
    count the caller built with) or the preset's."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    emb = shapes.get("model.embed_tokens.weight")
    q = shapes.get("model.layers.0.self_attn.q_proj.weight")
    k = shapes.get("model.layers.0.self_attn.k_proj.weight")
    if emb is None or q is None or k is None or len(emb) != 2:
        return None
    vocab, hidden = emb
    layers = len({key.split(".")[2] for key in shapes if key.startswith("model.layers.")})
    moe = any(".mlp.experts." in key for key in shapes)
    qk_norm = shapes.get("model.layers.0.self_attn.q_norm.weight")
    matches = []
    for name, base in MODEL_PRESETS.items():
        if bool(base.get("use_moe")) != moe or bool(base.get("qk_norm")) != bool(qk_norm):
            continue
        if qk_norm:
            head_dim = qk_norm[0]
            heads = q[0] // head_dim
        else:
            heads = heads_hint or base.get("num_attention_heads", 8)
            head_dim = q[0] // heads
        if head_dim == 0 or k[0] % head_dim:
            continue
        want = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                    num_key_value_heads=k[0] // head_dim)
        default = MiniMindConfig.from_preset(name)
        flags = {f: v for f, v in want.items() if getattr(default, f) != v}
        try:
            cfg = MiniMindConfig.from_preset(name, vocab_size=vocab, **flags)
        except ValueError:
            continue
        if state_shapes(cfg) == shapes:
            matches.append((len(flags), name, flags))
    if not matches:
        return None
    _, name, flags = min(matches, key=lambda m: m[0])
    return name, flags


def describe_state(state: dict, heads_hint=None) -> str:
    """What the file is, as the flags to pass: "this file is a minimind3-moe model: pass --preset minimind3-moe"."""
    emb = state.get("model.embed_tokens.weight")
    if emb is None or getattr(emb, "dim", lambda: 0)() != 2:
        return "it does not look like a MiniMind state dict (no model.embed_tokens.weight)"
    vocab = emb.shape[0]
    # No flag sets the vocabulary: it comes from the tokenizer the file was trained with.
    vocab_note = "" if vocab == MiniMindConfig().vocab_size else f" (and its {vocab}-token tokenizer)"
    found = preset_for_state(state, heads_hint)
    if found is not None:
        name, flags = found
        extra = "".join(f" --{k} {v}" for k, v in flags.items())
        return (f"this file is a {name} model{' with' + extra if extra else ''}: pass --preset {name}{extra}"
                f"{vocab_note}")
    layers = len({k.split(".")[2] for k in state if k.startswith("model.layers.")})
    moe = any(".mlp.experts." in k for k in state)
    family = (f"minimind-3 architecture (QK-norm), so start from --preset minimind3{'-moe' if moe else ''}"
              if any(".self_attn.q_norm." in k for k in state) else "MiniMind2 architecture")
    return (f"the file looks like --hidden_size {emb.shape[1]} --num_hidden_layers {layers} --use_moe {int(moe)} "
            f"with vocab {vocab}, {family}; no preset with these flags has exactly its shapes")


def weight_name(stage: str, config: MiniMindConfig) -> str:
    return f"{stage}_{config.hidden_size}{'_moe' if config.use_moe else ''}"


def weight_path(save_dir, stage: str, config: MiniMindConfig) -> Path:
    return Path(save_dir) / f"{weight_name(stage, config)}.pth"


def resume_path(checkpoint_dir, stage: str, config: MiniMindConfig) -> Path:
    return Path(checkpoint_dir) / f"{weight_name(stage, config)}_resume.pth"


def unwrap(model):
    """The plain module under DDP and/or torch.compile wrappers (`.module`, `._orig_mod`)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


def half_state_dict(model) -> dict:
    """Weights for release/inference: half precision on CPU, like the original MiniMind's .pth files."""
    return {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in unwrap(model).state_dict().items()}


def load_tokenizer(path=DEFAULT_TOKENIZER):
    from transformers import AutoTokenizer
    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json in {path} (train one with trainer/train_tokenizer.py)")
    return AutoTokenizer.from_pretrained(str(path))


def load_state_dict_file(path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a resume checkpoint also holds the weights
    return state


class WeightLoadError(UserError, RuntimeError):
    """A weight file that does not fit the model (wrong stage, size or vocab)."""


def describe_model(cfg: MiniMindConfig) -> str:
    arch = "minimind-3, QK-norm" if cfg.qk_norm else "MiniMind2"
    return (f"hidden_size={cfg.hidden_size}, num_hidden_layers={cfg.num_hidden_layers}, num_attention_heads="
            f"{cfg.num_attention_heads}, num_key_value_heads={cfg.num_key_value_heads}, use_moe={int(cfg.use_moe)}, "
            f"vocab_size={cfg.vocab_size}; {arch}")


def load_weights(model, path, what="weights"):
    """strict=True load; a file that does not fit says which preset (and size flags) it needs, read from its
    tensor shapes, instead of a 60-line key dump."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    state = load_state_dict_file(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        cfg = getattr(model, "config", None)
        built = f" (built with {describe_model(cfg)})" if cfg is not None else ""
        hint = describe_state(state, getattr(cfg, "num_attention_heads", None)) if isinstance(state, dict) else ""
        first = str(e).splitlines()[0:3]
        raise WeightLoadError(f"{what}: {path} does not match the model{built}: {hint}\n"
                              + "\n".join(first)) from None
    return model
