"""Loading a MiniMind for inference, and the small chat helpers every front end shares.

Used by eval_llm.py (terminal chat), scripts/serve_openai_api.py (OpenAI-compatible server), the web demo and
the evaluation tools, so that "which model, which weights, which device" means the same thing everywhere.

API
    add_model_args(parser)                  the upstream flags: --weight --save_dir --load_from --hidden_size
                                            --num_hidden_layers --use_moe --lora_weight --inference_rope_scaling
                                            --device --dtype (+ --preset --num_attention_heads --num_key_value_heads
                                            --tokenizer_path --lora_alpha)
    model_args(**overrides) -> Namespace    the same flags' defaults without a command line, e.g.
                                            load_model(model_args(weight="reason", device="cpu"))
    load_model(args) -> (model, tokenizer, name)
                                            eval-mode model on its device/dtype, its tokenizer, a display name
    chat_prompt(tokenizer, messages, tools=None, enable_thinking=None, open_thinking=None,
                chat_template_kwargs=None) -> str
                                            the ChatML prompt text, ending with the assistant header (the
                                            thinking switch mapped to whichever one the template reads)

Generating token ids (stream_tokens) is model/generation.py's; turning them into chat events (ReplyStream,
ChatStreamParser) is model/reply_stream.py's. Loading mistakes raise model.errors.UserError subclasses (or FileNotFoundError):
commands report them with model.errors.run_main / exit_on_user_error (one `error:` line, exit status 2).

Where the weights come from (flags named as in the original MiniMind):
    --load_from model (default)   native weights {save_dir}/{weight}_{hidden_size}[_moe].pth, e.g.
                                  out/full_sft_512.pth; --weight may also be a path to a .pth file
    --load_from DIR               a transformers folder (save_pretrained / scripts/convert_model.py output),
                                  loaded with AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
                                  together with its own tokenizer
    --lora_weight NAME|PATH       a LoRA adapter ({save_dir}/lora/{NAME}_{hidden}[_moe].pth or a file) trained
                                  by trainer/train_lora.py, merged into the weights after loading
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model.chat_template import thinking_kwargs  # noqa: E402
from model.errors import UserError  # noqa: E402
from model.model_minimind import MiniMindForCausalLM  # noqa: E402
from model.checkpoint import (DEFAULT_OUT, DEFAULT_TOKENIZER, load_tokenizer, load_weights, weight_name,  # noqa: E402
                              weight_path)
from model.config_flags import add_model_size_args, model_config_from_args  # noqa: E402
from model.runtime import default_device, resolve_dtype  # noqa: E402

NO_LORA = (None, "", "None", "none")


class ModelLoadError(UserError, RuntimeError):
    """A model that cannot be loaded as asked (bad flag combination, unreadable folder)."""


# ================================================================================================================
# Flags
# ================================================================================================================
def add_model_args(parser: argparse.ArgumentParser, weight: str = "full_sft") -> argparse.ArgumentParser:
    """Add the model-selection flags (upstream names and defaults) to `parser`; returns it."""
    p = parser.add_argument_group("model")
    p.add_argument("--weight", type=str, default=weight,
                   help="stage whose weights to load: pretrain, full_sft, dpo, reason, ppo_actor, grpo, spo, ... "
                        "(file {save_dir}/{weight}_{hidden_size}[_moe].pth), or a path to a .pth file")
    p.add_argument("--save_dir", type=str, default=str(DEFAULT_OUT), help="folder holding the .pth weights")
    p.add_argument("--load_from", type=str, default="model",
                   help="'model' = native .pth weights; anything else = a transformers model folder")
    add_model_size_args(p)  # --preset, --hidden_size, --num_hidden_layers, ..., --use_moe
    p.add_argument("--tokenizer_path", type=str, default=str(DEFAULT_TOKENIZER),
                   help="tokenizer folder for --load_from model (a transformers folder brings its own)")
    p.add_argument("--lora_weight", type=str, default="None",
                   help="LoRA adapter to merge: a name ({save_dir}/lora/{name}_{hidden}.pth) or a .pth path")
    p.add_argument("--lora_alpha", type=float, default=None,
                   help="override the adapter's alpha (default: the .json saved beside it by train_lora.py, "
                        "else 16; rank and targets are read from the file)")
    p.add_argument("--inference_rope_scaling", action="store_true",
                   help="YaRN RoPE scaling: extrapolate a model trained at 2048 tokens to longer contexts")
    p.add_argument("--device", type=str, default=None, help="default: npu, then cuda, then mps, then cpu")
    p.add_argument("--dtype", type=str, default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="auto = bf16 where supported (GPU, NPU, CPUs with native bf16), fp16 on older GPUs, else float32")
    return parser


def model_args(**overrides) -> argparse.Namespace:
    """The model flags' defaults as a Namespace, with `overrides` applied (for callers without a command line)."""
    args = add_model_args(argparse.ArgumentParser()).parse_args([])
    unknown = set(overrides) - set(vars(args))
    if unknown:
        raise TypeError(f"model_args: unknown option(s) {sorted(unknown)}; known: {sorted(vars(args))}")
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


# ================================================================================================================
# Loading
# ================================================================================================================
def native_weight_file(args) -> Path:
    """The .pth file `--weight` names under `--save_dir` (or `--weight` itself when it is a path)."""
    if args.weight.endswith(".pth"):
        return Path(args.weight)
    return weight_path(args.save_dir, args.weight, model_config_from_args(args))


def _missing_weight_message(args, path: Path) -> str:
    folder = path.parent
    found = sorted(p.name for p in folder.glob("*.pth")) if folder.is_dir() else []
    listing = f"; {folder} holds: {', '.join(found)}" if found else f"; {folder} holds no .pth files"
    return (f"--weight {args.weight}: weight file not found: {path}{listing}. Train that stage first, or check "
            f"--weight / --save_dir / --preset / --hidden_size / --num_hidden_layers / --use_moe.")


def lora_file(args, config) -> Path:
    """The adapter file `--lora_weight` names: a path, or {save_dir}/lora/{name}_{hidden}[_moe].pth (the
    loaded model's size, as train_lora.py names it)."""
    name = args.lora_weight
    if name.endswith(".pth") or Path(name).is_file():
        return Path(name)
    moe = "_moe" if getattr(config, "use_moe", False) else ""
    return Path(args.save_dir) / "lora" / f"{name}_{config.hidden_size}{moe}.pth"


def attach_lora(model, path: Path, alpha: Optional[float] = None, log=print):
    """Apply, load and merge a LoRA adapter. The file stores A (rank x in) and B (out x rank) per wrapped layer,
    so rank and targets are read from it; alpha comes from the .json train_lora.py saves beside it (an explicit
    `alpha` wins; adapters without the .json, e.g. upstream ones, get train_lora.py's default 16)."""
    from model.model_lora import apply_lora, load_lora, lora_meta, merge_lora  # lazy: only LoRA users need it

    if not path.is_file():
        raise FileNotFoundError(f"--lora_weight: adapter not found: {path} (train one with trainer/train_lora.py)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    a_keys = [k for k in state if k.endswith(".lora_A.weight")]
    if not a_keys:
        raise ModelLoadError(f"--lora_weight: {path} holds no LoRA tensors (keys ending in .lora_A.weight)")
    ranks = {state[k].shape[0] for k in a_keys}
    if len(ranks) != 1:
        raise ModelLoadError(f"--lora_weight: {path} mixes ranks {sorted(ranks)}")
    targets = sorted({k[:-len(".lora_A.weight")].rsplit(".", 1)[-1] for k in a_keys})
    rank = ranks.pop()
    if alpha is None:
        meta = lora_meta(path)
        alpha = float(meta["alpha"]) if meta else 16.0
    apply_lora(model, rank, alpha, targets)
    load_lora(model, path)
    merge_lora(model)  # fold into the base weights: plain Linear layers again, no per-token LoRA cost
    log(f"merged LoRA adapter {path} (rank {rank}, alpha {alpha:g}, targets {','.join(targets)})")
    return model


def load_model(args, log=print):
    """Build the model the flags describe -> (model in eval mode on its device/dtype, tokenizer, display name).

    Errors a user can fix (missing file, wrong size) raise FileNotFoundError / WeightLoadError /
    ModelLoadError (all model.errors.UserError) with a message saying what to change.
    """
    device = args.device or default_device()
    dtype = resolve_dtype(getattr(args, "dtype", "auto"), device)
    if args.load_from == "model":
        config = model_config_from_args(args, inference_rope_scaling=bool(args.inference_rope_scaling))
        path = native_weight_file(args)
        if not path.is_file():
            raise FileNotFoundError(_missing_weight_message(args, path))
        tokenizer = load_tokenizer(args.tokenizer_path)
        model = MiniMindForCausalLM(config)
        load_weights(model, path, f"--weight {args.weight}")
        name = "minimind-" + (path.stem if args.weight.endswith(".pth") else weight_name(args.weight, config))
        log(f"loaded {path}")
    else:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        folder = Path(args.load_from)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--load_from {args.load_from}: not a transformers model folder (no "
                                    f"config.json); use --load_from model for native .pth weights")
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        if args.inference_rope_scaling:
            if not hasattr(config, "inference_rope_scaling"):
                raise ModelLoadError(f"--inference_rope_scaling: {folder} is a {config.model_type} model, not a "
                                     f"MiniMind; set rope scaling in its config.json instead")
            config.inference_rope_scaling = True
        model = AutoModelForCausalLM.from_pretrained(folder, config=config, trust_remote_code=True)
        if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(folder)
        else:  # a folder with the weights only: fall back to --tokenizer_path
            log(f"{folder} has no tokenizer files; using {args.tokenizer_path}")
            tokenizer = load_tokenizer(args.tokenizer_path)
        name = folder.resolve().name
        log(f"loaded {folder} ({config.model_type})")
    if args.lora_weight not in NO_LORA:
        attach_lora(model, lora_file(args, model.config), args.lora_alpha, log)
        name += "+" + Path(args.lora_weight).stem
    model = model.eval().to(device=device, dtype=dtype)
    n = sum(p.numel() for p in model.parameters())
    log(f"model {name}: {n / 1e6:.2f}M parameters on {device} ({str(dtype).replace('torch.', '')})")
    return model, tokenizer, name


# ================================================================================================================
# Prompts and outputs
# ================================================================================================================
def chat_prompt(tokenizer, messages: List[dict], tools: Optional[list] = None,
                enable_thinking: Optional[bool] = None, add_generation_prompt: bool = True,
                open_thinking: Optional[bool] = None, chat_template_kwargs: Optional[dict] = None) -> str:
    """Render `messages` ([{role, content, ...}]) with the tokenizer's chat template, ending with the assistant
    header so the model writes the reply. Tokenize the result with `tokenizer(text, add_special_tokens=False)`.

    enable_thinking / open_thinking (synonyms; either may also sit in chat_template_kwargs): False pre-fills an
    empty <think></think> block (reasoning models then answer directly); True lets the model reason; None is the
    template's default. model/chat_template.thinking_kwargs passes the choice under the switch the template
    reads (ours: enable_thinking; upstream's minimind-3 tokenizer: open_thinking, which opens a <think> block),
    and raises ChatTemplateArgumentError (a UserError) on a non-boolean or contradictory value.
    """
    kwargs = thinking_kwargs(tokenizer, enable_thinking, open_thinking, chat_template_kwargs)
    return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **kwargs)
