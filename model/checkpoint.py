"""Model files: default paths, weight and resume files (names, writing, exact-resume loading), strict weight
loading, the tokenizer.

Names follow the original MiniMind: `{save_dir}/{stage}_{hidden}[_moe].pth` for weights and
`{checkpoint_dir}/{stage}_{hidden}[_moe]_resume.pth` for resume state, for both generations (as upstream:
`full_sft_768.pth` may hold a MiniMind2 or a minimind-3, so the shape comes from --preset). Loading is always
`torch.load(weights_only=True)` + `load_state_dict(strict=True)`; a file that does not fit the model raises
`WeightLoadError` with one actionable message naming the preset (and size flags) the file needs, read from its
tensor shapes, instead of a key dump.
"""
import random
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed

from model.atomic_io import atomic_save
from model.errors import UserError
from model.model_minimind import PRESETS as MODEL_PRESETS
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
from model.runtime import unwrap

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = ROOT / "model"
DEFAULT_OUT = ROOT / "out"
DEFAULT_CHECKPOINTS = ROOT / "checkpoints"


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


def half_state_dict(model) -> dict:
    """Weights for release/inference: half precision on CPU, like the original MiniMind's .pth files."""
    return {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in unwrap(model).state_dict().items()}


def load_tokenizer(path=DEFAULT_TOKENIZER, vocab_size=None):
    """The tokenizer in folder `path`; with `vocab_size` (the model's), an error if it has more tokens than the
    model has embeddings."""
    from transformers import AutoTokenizer
    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json in {path} (train one with trainer/train_tokenizer.py)")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer at {path} has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}")
    return tokenizer


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


# ---------------------------------------------------------------------------------------------------------------
# Resume checkpoints: everything an exact resume needs, beside the weight file
# ---------------------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(weight_file, resume_file, model, optimizer, scaler, step: int, batches, dist_state, *,
                    run_id=None, flags: Optional[dict] = None,
                    extra: Optional[dict] = None, weights: Callable = half_state_dict):
    """Rank 0 (`dist_state.is_main`) writes, each file atomically (model/atomic_io.py):

      weight_file  `weights(model)`: half-precision weights for inference (LoRA passes `lora_state_dict`)
      resume_file  everything an exact resume needs: fp32 model, optimizer, GradScaler, the `extra` modules
                   ({name: module}, e.g. a value tracker), step, data position, world size, RNG states, the
                   tracker's run id and the run's `flags` (scripts/report.py shows them)
    `batches` gives the data position (`state_dict()`: trainer/trainer_utils.Batches). Every rank then waits at a
    barrier, so none runs ahead while the files are written.
    """
    if dist_state.is_main:
        model = unwrap(model)
        atomic_save(weights(model), weight_file)
        atomic_save({
            "model": {k: v.cpu() for k, v in model.state_dict().items()},  # full precision for exact resume
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "extra": {name: module.state_dict() for name, module in (extra or {}).items()},
            "step": step, **batches.state_dict(), "world_size": dist_state.world_size, "rng": rng_state(),
            "run_id": run_id,
            "args": {k: v for k, v in (flags or {}).items() if isinstance(v, (int, float, str, bool, type(None)))},
        }, resume_file)
    if dist_state.ddp:
        torch.distributed.barrier()


def load_checkpoint(resume_file, model, optimizer, scaler, batches, world_size: int = 1,
                    extra: Optional[dict] = None, steps_per_group: int = 1, log=print):
    """Restore what `save_checkpoint` wrote (strictly) into the plain model, optimizer, scaler, `extra` modules
    and data position (`batches.load_state_dict`), and the RNG states; `log` prints (print0 in training: rank 0
    only). Returns (step, tracker run id); (0, None) when there is no file yet.

    Steps count optimizer steps of one world size: resumed on a different number of ranks, the same position
    is a different step, and the step (hence the LR schedule) continues from `batches.steps_done()` times
    `steps_per_group` (the optimizer steps a stage takes per item of `batches`: RL takes several per rollout).
    """
    resume_file = Path(resume_file)
    if not resume_file.is_file():
        log(f"--from_resume 1: no checkpoint at {resume_file}, starting fresh")
        return 0, None
    ck = torch.load(resume_file, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(ck["model"], strict=True)
    optimizer.load_state_dict(ck["optimizer"])
    scaler.load_state_dict(ck["scaler"])
    for name, module in (extra or {}).items():
        module.load_state_dict(ck["extra"][name], strict=True)
    batches.load_state_dict(ck)
    set_rng_state(ck["rng"])
    step = ck["step"]
    log(f"resumed from {resume_file}: epoch {batches.epoch + 1}, step {step}")
    if ck["world_size"] != world_size:
        step = batches.steps_done() * steps_per_group
        log(f"resuming a {ck['world_size']}-process run on {world_size} processes: continuing after sample "
               f"{batches.consumed} of epoch {batches.epoch + 1}; step rescaled to {step} for world size {world_size}")
    return step, ck.get("run_id")
