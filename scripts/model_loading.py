"""Loading a MiniMind for inference, and the small chat helpers every front end shares.

Used by eval_llm.py (terminal chat), scripts/serve_openai_api.py (OpenAI-compatible server), the web demo and
the evaluation tools, so that "which model, which weights, which device" means the same thing everywhere.

API
    add_model_args(parser)                  the upstream flags: --weight --save_dir --load_from --hidden_size
                                            --num_hidden_layers --use_moe --lora_weight --inference_rope_scaling
                                            --device --dtype (+ --num_attention_heads --num_key_value_heads
                                            --tokenizer_path --lora_alpha)
    model_args(**overrides) -> Namespace    the same flags' defaults without a command line, e.g.
                                            load_model(model_args(weight="reason", device="cpu"))
    load_model(args) -> (model, tokenizer, name)
                                            eval-mode model on its device/dtype, its tokenizer, a display name
    chat_prompt(tokenizer, messages, tools=None, enable_thinking=None) -> str
                                            the ChatML prompt text, ending with the assistant header
    split_thinking(text) -> (reasoning, answer)
                                            separate a reasoning model's <think>...</think> from its answer
    IncrementalDecoder(tokenizer)           token ids in, printable text out, never half a UTF-8 character
    ChatStreamParser()                      streamed text in, ("content" | "reasoning" | "tool_call", value) out
    stream_tokens(model, prompt_ids, ...)   yield generated token ids (any causal LM, MiniMind's fast path)
    cli_errors()                            context manager: loading mistakes -> one `error:` line, exit 2

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
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model.errors import UserError  # noqa: E402
from model.generation import stream_generate  # noqa: E402
from model.model_minimind import MiniMindForCausalLM  # noqa: E402
from model.checkpoint import (DEFAULT_OUT, DEFAULT_TOKENIZER, WeightLoadError, add_model_size_args,  # noqa: E402
                              load_tokenizer, load_weights, model_config_from_args, weight_name, weight_path)
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
            f"--weight / --save_dir / --hidden_size / --num_hidden_layers / --use_moe.")


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
    ModelLoadError with a message saying what to change; wrap the call in `cli_errors()` in scripts.
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


@contextmanager
def cli_errors():
    """Turn a user's loading mistake into one `error: ...` line and exit status 2 (bugs keep their traceback)."""
    from model.model_lora import LoRALoadError
    try:
        yield
    except (FileNotFoundError, WeightLoadError, LoRALoadError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


# ================================================================================================================
# Prompts and outputs
# ================================================================================================================
def chat_prompt(tokenizer, messages: List[dict], tools: Optional[list] = None,
                enable_thinking: Optional[bool] = None, add_generation_prompt: bool = True) -> str:
    """Render `messages` ([{role, content, ...}]) with the tokenizer's chat template, ending with the assistant
    header so the model writes the reply. Tokenize the result with `tokenizer(text, add_special_tokens=False)`.

    enable_thinking=False pre-fills an empty <think></think> block (reasoning models then answer directly);
    None leaves the choice to the model.
    """
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **kwargs)


def _strip_answer_tags(text: str) -> str:
    return text.replace("<answer>", "").replace("</answer>", "")


def split_thinking(text: str) -> Tuple[str, str]:
    """'<think>\\nR\\n</think>\\n\\nA' -> ('R', 'A'). Also handles a think block opened by the prompt (only
    '</think>' in the text), an unfinished one (only '<think>': all reasoning so far, no answer yet) and
    MiniMind2's <answer></answer> wrapper. Text without tags is all answer."""
    if "</think>" in text:
        head, _, tail = text.partition("</think>")
        reasoning = head.split("<think>", 1)[1] if "<think>" in head else head
        return reasoning.strip(), _strip_answer_tags(tail).strip()
    if "<think>" in text:
        before, _, reasoning = text.partition("<think>")
        return reasoning.strip(), _strip_answer_tags(before).strip()
    return "", _strip_answer_tags(text)


class IncrementalDecoder:
    """Token ids in, text out, as they are generated.

    A Chinese character or an emoji spans several byte-level tokens; decoding them one at a time prints U+FFFD.
    So the ids are kept, and the text is released only once the decoded tail no longer ends in U+FFFD (an
    incomplete character). Only a short window is re-decoded each time, not the whole answer: the ids from the
    previous release on, whose text is known, give the context (tokenizers that drop a word's leading space at
    the start of a decode need it) and the new text is what lies beyond it.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: List[int] = []
        self.prefix = 0  # window start: ids[prefix:read] were printed by the previous release
        self.read = 0    # ids[:read] are fully printed

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly printable text (often '', e.g. mid-character)."""
        self.ids.append(int(token_id))
        return self._release(final=False)

    def _release(self, final: bool) -> str:
        known = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) <= len(known) or (text.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(known):]

    def flush(self) -> str:
        """Whatever is still held back (an invalid byte sequence at the very end), at the end of generation."""
        return self._release(final=True)

    @property
    def text(self) -> str:
        return self._decode(self.ids)


class ChatStreamParser:
    """Splits streamed assistant text into events as it arrives:

        ("reasoning", str)   text inside <think>...</think> (the `reasoning_content` of OpenAI-style servers)
        ("content", str)     the answer (MiniMind2's <answer> tags removed)
        ("tool_call", dict)  {"name": str, "arguments": str (JSON)} from <tool_call>{json}</tool_call>

    A tag may arrive split over several pieces ("<thi" + "nk>"), so text that could be the start of a tag is held
    back until it is decided. Whitespace around the blocks is trimmed (leading whitespace of each part, trailing
    whitespace before a tag or at the end), and a tool call whose JSON does not parse is passed on verbatim as
    content. Feeding all text at once or piece by piece gives the same events' joined text.
    """

    TAGS = {"content": ("<think>", "</think>", "<tool_call>", "<answer>", "</answer>"),
            "reasoning": ("</think>",),
            "tool": ("</tool_call>",)}

    def __init__(self, in_thinking: bool = False, parse_tools: bool = True):
        self.state = "reasoning" if in_thinking else "content"
        self.parse_tools = parse_tools
        self.buf = ""        # undecided text (a possible partial tag, or a tool call being collected)
        self.pending_ws = ""  # trailing whitespace held back until we know more text follows
        self.started = False  # whether the current part emitted anything (leading whitespace is dropped)

    def _tags(self):
        tags = self.TAGS[self.state]
        return tags if self.parse_tools else tuple(t for t in tags if t != "<tool_call>")

    def _emit(self, text: str, out: list):
        """Emit text in the current part, holding back trailing whitespace and dropping leading whitespace."""
        if not self.started:
            text = text.lstrip()
        if not text:
            return
        body = text.rstrip()
        if body:
            out.append((self.state, self.pending_ws + body))
            self.started, self.pending_ws = True, ""
        self.pending_ws += text[len(body):]

    def _switch(self, state: str):
        self.state, self.pending_ws, self.started = state, "", False

    def _tool_call(self, raw: str, out: list):
        try:
            call = json.loads(raw)
            name = call["name"]
            assert isinstance(name, str) and name
            args = call.get("arguments", {})
            if not isinstance(args, str):
                args = json.dumps(args, ensure_ascii=False)
            out.append(("tool_call", {"name": name, "arguments": args}))
        except (ValueError, KeyError, TypeError, AssertionError):
            out.append(("content", f"<tool_call>{raw}</tool_call>"))  # not a valid call: show it as text

    def feed(self, text: str) -> list:
        out = []
        self.buf += text
        while True:
            tags = self._tags()
            hits = [(self.buf.find(t), t) for t in tags if t in self.buf]
            if not hits:
                break
            i, tag = min(hits)
            before, self.buf = self.buf[:i], self.buf[i + len(tag):]
            if self.state == "tool":
                self._tool_call(before.strip(), out)
                self._switch("content")
            else:
                self._emit(before, out)
                if tag == "<think>":
                    self._switch("reasoning")
                elif tag == "</think>":
                    self._switch("content")
                elif tag == "<tool_call>":
                    self._switch("tool")
                # <answer> / </answer>: dropped, the part goes on
        if self.state == "tool":
            return out  # keep collecting the call
        # Release everything except a suffix that could still become a tag.
        keep = 0
        for t in self._tags():
            for n in range(min(len(t) - 1, len(self.buf)), keep, -1):
                if self.buf.endswith(t[:n]):
                    keep = n
                    break
        ready, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        self._emit(ready, out)
        return out

    def finish(self) -> list:
        """End of generation: release held-back text (an unfinished tool call is shown verbatim)."""
        out = []
        if self.state == "tool":
            self._switch("content")
            self._emit("<tool_call>" + self.buf, out)
        else:
            self._emit(self.buf, out)
        self.buf = ""
        return out


# ================================================================================================================
# Generation for any causal LM
# ================================================================================================================
def is_minimind(model) -> bool:
    return getattr(model.config, "model_type", None) == "minimind"


def stream_tokens(model, prompt_ids: Sequence[int], max_new_tokens: int = 512, temperature: float = 0.85,
                  top_p: float = 0.85, top_k: int = 0, repetition_penalty: float = 1.0, eos_token_id: int = 2,
                  pad_token_id: int = 0, generator: Optional[torch.Generator] = None) -> Iterator[int]:
    """Yield generated token ids (EOS included, then stop). MiniMind models use our decoding engine
    (model/generation.py); any other transformers model (e.g. a Llama export) uses transformers' own
    `generate()` with a streamer, so no second decoding loop has to follow transformers' cache API."""
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    max_new_tokens = max(0, min(max_new_tokens, limit - len(prompt_ids)))
    if is_minimind(model):
        yield from stream_generate(model, list(prompt_ids), max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                                   eos_token_id=eos_token_id, pad_token_id=pad_token_id, generator=generator)
        return
    yield from hf_stream_tokens(model, prompt_ids, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                                eos_token_id, pad_token_id)


def hf_stream_tokens(model, prompt_ids, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                     eos_token_id, pad_token_id) -> Iterator[int]:
    """transformers' `generate()` in a worker thread, its tokens handed over through a streamer queue."""
    import queue
    import threading

    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    class TokenQueue(BaseStreamer):
        def __init__(self):
            self.q, self.prompt_seen = queue.Queue(), False

        def put(self, value):  # first call: the prompt; then one tensor of new token ids per step
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            for t in value.reshape(-1).tolist():
                self.q.put(int(t))

        def end(self):
            self.q.put(None)

    class Cancelled(StoppingCriteria):  # the consumer stopped early (a client went away): stop generating too
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    if max_new_tokens <= 0:
        return
    streamer, cancel = TokenQueue(), threading.Event()
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if temperature > 0 else \
        dict(do_sample=False)
    ids = torch.tensor([list(prompt_ids)], device=next(model.parameters()).device)
    failure = []

    def work():
        try:
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                               repetition_penalty=repetition_penalty, streamer=streamer,
                               stopping_criteria=StoppingCriteriaList([Cancelled()]), **sampling)
        except BaseException as e:  # re-raised in the consumer's thread below
            failure.append(e)
            streamer.q.put(None)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        while (t := streamer.q.get()) is not None:
            yield t
            if t == eos_token_id:
                break
    finally:
        cancel.set()
        worker.join()
    if failure:
        raise failure[0]
