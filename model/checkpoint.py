"""Model files: default paths, weight and resume file names, strict weight loading, the tokenizer.

Names follow the original MiniMind: `{save_dir}/{stage}_{hidden}[_moe].pth` for weights and
`{checkpoint_dir}/{stage}_{hidden}[_moe]_resume.pth` for resume state. Loading is always
`torch.load(weights_only=True)` + `load_state_dict(strict=True)`; a file that does not fit the model raises
`WeightLoadError` with one actionable message instead of a key dump.
"""
from pathlib import Path

import torch

from model.errors import UserError
from model.model_minimind import MiniMindConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = ROOT / "model"
DEFAULT_OUT = ROOT / "out"
DEFAULT_CHECKPOINTS = ROOT / "checkpoints"


PRESETS = ("minimind2-small", "minimind2", "minimind2-moe", "minimind3", "minimind3-moe")
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


def model_config_from_args(args, **overrides) -> MiniMindConfig:
    """The model config from --preset and the size flags (unset flags keep the preset's value)."""
    kw = {k: getattr(args, k, None) for k in SIZE_FLAGS}
    kw = {k: v for k, v in kw.items() if v is not None}
    if "use_moe" in kw:
        kw["use_moe"] = bool(kw["use_moe"])
    kw.update(overrides)
    preset = getattr(args, "preset", None)
    if preset:
        return MiniMindConfig.from_preset(preset, **kw)
    return MiniMindConfig(**kw)


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


def load_weights(model, path, what="weights"):
    """strict=True load with an actionable message instead of a 60-line key dump."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    state = load_state_dict_file(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        cfg = getattr(model, "config", None)
        hint = ""
        if cfg is not None:
            hint = (f" The model was built with hidden_size={cfg.hidden_size}, num_hidden_layers="
                    f"{cfg.num_hidden_layers}, use_moe={int(cfg.use_moe)}, vocab_size={cfg.vocab_size}; "
                    f"the file was probably trained with different --hidden_size/--num_hidden_layers/--use_moe.")
        first = str(e).splitlines()[0:3]
        raise WeightLoadError(f"{what}: {path} does not match the model.{hint}\n" + "\n".join(first)) from None
    return model
