"""The model-shape flags every script shares (--preset, --hidden_size, --num_hidden_layers, ..., --use_moe) and
the MiniMindConfig they make. Training (trainer/trainer_utils.add_common_args), inference (scripts/model_loading),
evaluation and conversion all call `add_model_size_args` and `model_config_from_args`, so a size means the same
thing everywhere; the presets themselves are model/model_minimind.py's PRESETS.
"""
from model.errors import UserError
from model.model_minimind import PRESETS as MODEL_PRESETS
from model.model_minimind import MiniMindConfig

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
