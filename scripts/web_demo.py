"""A chat web page for MiniMind, written with streamlit's chat elements.

It talks either to a local model (native out/*.pth weights or a transformers folder) or to any
OpenAI-compatible endpoint (e.g. scripts/serve_openai_api.py), and streams the reply token by token.
A reasoning model's <think>...</think> goes into a collapsible "Thinking" box above the answer. Two separate
sidebar switches: "Thinking" decides whether the model reasons at all (the chat template's switch: enable_thinking
in ours, open_thinking in upstream minimind-3's; sent to an endpoint as chat_template_kwargs), "Show thinking"
only hides or shows the box.

    streamlit run scripts/web_demo.py                                  # weights from out/
    streamlit run scripts/web_demo.py -- --save_dir /path/to/weights   # flags after `--` go to this script
    MINIMIND_SAVE_DIR=/path/to/weights streamlit run scripts/web_demo.py
    streamlit run scripts/web_demo.py -- --api_base http://127.0.0.1:8998/v1   # start in API mode

The sidebar lists every model it finds: `{weight}_{hidden}[_moe].pth` files in --save_dir (the layer count is
read from the state dict, so a 16-layer file needs no flag) and transformers folders under the repo whose
config.json says model_type minimind or llama; or type any path. Runs from any working directory. Flags after
`--` are model_loading's (--device, --dtype, --num_attention_heads for a model trained with non-default heads,
...) plus sidebar defaults (--temperature --top_p --max_new_tokens --history_rounds --tools --enable_thinking).

Tools: the sidebar's tool picker offers model/tools.py's tools (calculator, unit conversion, time, exchange rates,
weather, phrase book) to the model. When it calls one, the page shows the call, runs it here (call_tool), shows
the result, sends it back as a `tool` message and streams the model's next turn: call -> result -> answer, at
most MAX_TOOL_ROUNDS rounds per question.
"""
import argparse
import json
import os
import pickle
import re
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `streamlit run` only adds scripts/; the imports below are repo-rooted

import streamlit as st  # noqa: E402
import torch  # noqa: E402
from openai import APIError  # noqa: E402

from model.chat_template import add_thinking_arg, template_default  # noqa: E402
from model.config_flags import model_config_from_args  # noqa: E402
from model.errors import USER_ERRORS  # noqa: E402
from model.generation import IncrementalDecoder, stream_tokens  # noqa: E402
from model.reply_stream import ChatStreamParser  # noqa: E402
from model.tool_loop import Episode, Turn, run_turns, split_valid  # noqa: E402
from model.tools import TOOL_NAMES, tool_schemas  # noqa: E402
from scripts.model_loading import add_model_args, chat_prompt, load_model  # noqa: E402

DEFAULT_SAVE_DIR = ROOT / "out"
DEFAULT_API_BASE = "http://127.0.0.1:8998/v1"
# Folders never searched for transformers checkpoints: big, irrelevant, or not ours.
SKIP_DIRS = {"__pycache__", "node_modules", "venv", "dataset", "checkpoints", "images", "tests", "wandb", "swanlab",
             "logs"}
NATIVE_NAME = re.compile(r"^(?P<weight>.+)_(?P<hidden>\d+)(?P<moe>_moe)?\.pth$")
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")
# Errors a user can fix by picking another model or path: shown in the page, not as a traceback (OSError and
# ValueError: what transformers raises for a folder it cannot read).
LOAD_ERRORS = (*USER_ERRORS, OSError, ValueError)
MAX_TOOL_ROUNDS = 4  # tool calls -> results rounds per question before the page stops asking


# ================================================================================================================
# Pure helpers (unit-tested without a browser)
# ================================================================================================================
def reply_events(pieces: Iterable[Tuple[str, object]], parse_tools: bool = False,
                 in_thinking: bool = False) -> Iterator[Tuple[str, object]]:
    """("text" | "reasoning" | "tool_call", value) pieces of a streamed reply -> ("reasoning" | "content" |
    "tool_call", value) events.

    "text" is raw model output: a reasoning model writes `<think>...</think>` and MiniMind2's reasoning models
    wrap the answer in `<answer>` tags, so it goes through model/reply_stream.py's ChatStreamParser (which also copes
    with a tag split across pieces). "reasoning" is already separated (an API server's `reasoning_content`), and
    so is "tool_call" ({"name", "arguments"}, joined from an API server's deltas). With parse_tools (tools were
    offered), `<tool_call>` blocks in the text become tool_call events too; without, they stay visible as text.
    in_thinking: the prompt opened a <think> block, so the text is reasoning until </think>.
    """
    parser = ChatStreamParser(in_thinking=in_thinking, parse_tools=parse_tools)
    for kind, value in pieces:
        if not value:
            continue
        if kind in ("reasoning", "tool_call"):
            yield kind, value
        else:
            yield from parser.feed(value)
    yield from parser.finish()


def collect_reply(events: Iterable[Tuple[str, object]]) -> Tuple[str, str]:
    """Join reply_events' deltas -> (thinking, answer)."""
    parts = {"reasoning": [], "content": [], "tool_call": []}
    for kind, text in events:
        parts[kind].append(text)
    return "".join(parts["reasoning"]), "".join(parts["content"])


def native_weight_name(path: Path) -> Optional[dict]:
    """out/{weight}_{hidden}[_moe].pth -> {"weight", "hidden_size", "use_moe"}; None for other names."""
    m = NATIVE_NAME.match(path.name)
    if m is None or m.group("weight").endswith("_resume"):
        return None
    return {"weight": m.group("weight"), "hidden_size": int(m.group("hidden")), "use_moe": int(bool(m.group("moe")))}


def inspect_native(path: Path) -> Optional[dict]:
    """Name fields plus num_hidden_layers counted from the state dict; None if the file is not a whole
    MiniMind model (a LoRA adapter, a critic, a resume checkpoint...)."""
    info = native_weight_name(path)
    if info is None:
        return None
    try:
        # mmap: only the key names and shapes are read, not the tensors.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return None  # not a torch zip file, or not loadable with weights_only: not a model to list
    if not isinstance(state, dict) or "model.embed_tokens.weight" not in state:
        return None
    if any(not (k.startswith("model.") or k.startswith("lm_head.")) or "lora_" in k for k in state):
        return None
    layers = {int(m.group(1)) for k in state if (m := LAYER_KEY.match(k))}
    info["num_hidden_layers"] = len(layers)
    info["hidden_size"] = int(state["model.embed_tokens.weight"].shape[1])
    info["use_moe"] = int(any(".mlp.experts." in k for k in state))
    return info


def find_hf_dirs(roots: Iterable[Path], max_depth: int = 4) -> List[Path]:
    """Folders holding a config.json with model_type minimind or llama (torch2hf / torch2llama exports)."""
    found = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        base_depth = len(root.parts)
        for dirpath, dirnames, filenames in os.walk(root):
            depth = len(Path(dirpath).parts) - base_depth
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
            if depth >= max_depth:
                dirnames[:] = []
            if "config.json" in filenames:
                try:
                    with open(Path(dirpath) / "config.json", encoding="utf-8") as f:
                        model_type = json.load(f).get("model_type")
                except (OSError, ValueError, AttributeError):
                    continue
                if model_type in ("minimind", "llama"):
                    found.append(Path(dirpath).resolve())
    return sorted(set(found))


def trim_history(messages: List[dict], rounds: int) -> List[dict]:
    """The last `rounds` user/assistant exchanges, as plain {"role", "content"} dicts (thinking and tool rounds
    dropped: the chat template and the reasoning models were trained without earlier turns' reasoning, and the
    answer already says what the tools gave)."""
    if rounds <= 0:
        return []
    kept = messages[-2 * rounds:]
    while kept and kept[0]["role"] != "user":  # never start in the middle of an exchange
        kept = kept[1:]
    return [{"role": m["role"], "content": m["content"]} for m in kept]


# ================================================================================================================
# Generation back ends: each yields ("text" | "reasoning" | "tool_call", value) pieces for reply_events
# ================================================================================================================
def local_pieces(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float, top_p: float,
                 repetition_penalty: float) -> Iterator[Tuple[str, str]]:
    """Generate on a local model: token ids from model/generation.py's stream_tokens (our decoding engine for
    MiniMind, transformers' generate() for other models), text through IncrementalDecoder so a character split
    over several byte-level tokens is printed only once complete."""
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    decoder = IncrementalDecoder(tokenizer)
    for tok in stream_tokens(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             repetition_penalty=repetition_penalty, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=pad):
        yield "text", decoder.push(tok)
    yield "text", decoder.flush()


def api_pieces(base_url: str, api_key: str, model_name: str, messages: List[dict], max_new_tokens: int,
               temperature: float, top_p: float, tools: Optional[List[dict]] = None,
               thinking: Optional[bool] = None) -> Iterator[Tuple[str, object]]:
    """Stream from an OpenAI-compatible endpoint with the official SDK. A server that separates the reasoning
    (`reasoning_content`, as ours and DeepSeek's do) sends it in its own field; one that does not sends
    `<think>` inside the content, which reply_events splits the same way. Tool calls arrive as OpenAI streams
    them (per call: index, id and name first, then pieces of the arguments), joined here by index and yielded
    as ("tool_call", {"id", "name", "arguments"}) when the stream ends. `thinking` (not None) goes as
    chat_template_kwargs {"enable_thinking": ...}: vLLM's convention, mapped by our server to the switch its
    template reads."""
    from openai import OpenAI
    client = OpenAI(base_url=base_url, api_key=api_key or "none", timeout=120.0, max_retries=0)
    extra = {} if thinking is None else {"extra_body": {"chat_template_kwargs": {"enable_thinking": thinking}}}
    stream = client.chat.completions.create(model=model_name, messages=messages, stream=True,
                                            max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                            **({"tools": tools} if tools else {}), **extra)
    calls = {}
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning = getattr(delta, "reasoning_content", None)
        if reasoning is None and delta.model_extra:  # a field the SDK's model does not declare
            reasoning = delta.model_extra.get("reasoning_content")
        yield "reasoning", reasoning
        yield "text", delta.content
        for tc in delta.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = tc.id or call["id"]
            if tc.function is not None:
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
    for i in sorted(calls):
        yield "tool_call", calls[i]


# ================================================================================================================
# The page
# ================================================================================================================
def parse_cli(argv=None):
    parser = argparse.ArgumentParser(description="MiniMind web demo (flags go after `--`)", allow_abbrev=False)
    add_model_args(parser)
    parser.add_argument("--api_base", type=str, default=None, help="start in API mode with this base URL")
    parser.add_argument("--api_key", type=str, default=os.environ.get("OPENAI_API_KEY", "none"))
    parser.add_argument("--api_model", type=str, default="minimind")
    parser.add_argument("--temperature", type=float, default=0.85)
    parser.add_argument("--top_p", type=float, default=0.85)
    parser.add_argument("--max_new_tokens", type=int, default=1024)
    parser.add_argument("--history_rounds", type=int, default=2)
    parser.add_argument("--tools", type=str, default="",
                        help=f"tools picked when the page opens: 'all' or a comma list of {','.join(TOOL_NAMES)}")
    add_thinking_arg(parser, help="the Thinking switch when the page opens (default: the chat template's own, on "
                                  "with our tokenizer, off with upstream minimind-3's; on for an endpoint)")
    # The env var lets callers (tests, a service unit) point at a weights folder without `-- flags`.
    parser.set_defaults(save_dir=os.environ.get("MINIMIND_SAVE_DIR", str(DEFAULT_SAVE_DIR)))
    # parse_known_args: under `streamlit run` argv holds only our flags, but under AppTest (inside pytest) it
    # holds pytest's own flags, which are not ours to reject.
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args


@st.cache_data(show_spinner=False)
def _inspect_native_cached(path: str, mtime_ns: int, size: int) -> Optional[dict]:
    return inspect_native(Path(path))  # keyed by mtime/size: a retrained file is re-read


@st.cache_data(show_spinner=False, ttl=30)
def _find_hf_dirs_cached(roots: tuple) -> List[str]:
    return [str(p) for p in find_hf_dirs([Path(r) for r in roots])]


def discover_models(save_dir: Path) -> List[dict]:
    """Every loadable model: native weights first (sorted by name), then transformers folders."""
    models = []
    for path in sorted(Path(save_dir).glob("*.pth")):
        st_ = path.stat()
        info = _inspect_native_cached(str(path), st_.st_mtime_ns, st_.st_size)
        if info:
            label = (f"{path.stem}  ·  {info['num_hidden_layers']} layers"
                     + ("  ·  MoE" if info["use_moe"] else ""))
            models.append({"kind": "native", "label": label, "path": str(path), **info})
    roots = tuple(sorted({str(ROOT), str(Path(save_dir).resolve())}))
    for d in _find_hf_dirs_cached(roots):
        try:
            shown = str(Path(d).relative_to(ROOT))
        except ValueError:
            shown = d
        models.append({"kind": "hf", "label": f"{shown}  (transformers)", "path": d})
    return models


def model_args(base_args, choice: dict, lora: Optional[str]) -> argparse.Namespace:
    """The namespace load_model reads: the command line's flags (device, dtype, heads, tokenizer...) with the
    sidebar's model and adapter in place of --weight/--load_from/--lora_weight."""
    args = argparse.Namespace(**vars(base_args))
    args.lora_weight = lora or "None"
    if choice["kind"] == "native":
        args.load_from = "model"
        args.save_dir = str(Path(choice["path"]).parent)
        args.weight = choice["weight"]
        args.hidden_size = choice["hidden_size"]
        args.num_hidden_layers = choice["num_hidden_layers"]
        args.use_moe = choice["use_moe"]
    else:
        args.load_from = choice["path"]
    return args


@st.cache_resource(max_entries=2, show_spinner=False)
def get_model(key: tuple, _args):
    """Loaded once per set of loading flags and shared by every browser tab and rerun. `key` (the flags as a
    tuple) is what streamlit hashes; the namespace itself is skipped (leading underscore)."""
    return load_model(_args)


def find_lora_adapters(save_dir: Path, choice: dict) -> List[str]:
    """Adapter names in {save_dir}/lora/ saved for the chosen native model's size ({name}_{hidden}[_moe].pth)."""
    if choice["kind"] != "native":
        return []
    suffix = f"_{choice['hidden_size']}{'_moe' if choice['use_moe'] else ''}.pth"
    return sorted(p.name[:-len(suffix)] for p in (Path(save_dir) / "lora").glob(f"*{suffix}"))


def hard_breaks(text: str) -> str:
    """Reasoning is written line by line (one step per line), which markdown would join into one paragraph."""
    return text.replace("\n", "  \n")


def show_tool_call(call: dict):
    """One call and its result, as the page shows them while the reply streams and in the history."""
    st.markdown(f"🔧 Tool call: **{call['name']}**")
    st.code(call["arguments"], language="json")
    st.markdown("📎 Tool result" + ("" if call.get("ok", True) else " (error)"))
    st.code(call["result"], language="json")


def render_message(msg: dict, show_thinking: bool):
    with st.chat_message(msg["role"]):
        for step in msg.get("steps", []):  # the tool rounds before the answer: call -> result, in order
            if step["thinking"] and show_thinking:
                with st.expander("💭 Thinking", expanded=False):
                    st.markdown(hard_breaks(step["thinking"]))
            if step["text"]:
                st.markdown(step["text"])
            for call in step["calls"]:
                show_tool_call(call)
        if msg.get("thinking") and show_thinking:
            with st.expander("💭 Thinking", expanded=False):
                st.markdown(hard_breaks(msg["thinking"]))
        st.markdown(msg["content"] or "*(empty reply)*")


def clear_chat():
    st.session_state.messages = []


def sidebar(args):
    """Draw the sidebar; returns the settings dict."""
    s = {}
    with st.sidebar:
        st.title("MiniMind")
        backend = st.radio("Backend", ["Local model", "API endpoint"], key="backend",
                           index=1 if args.api_base else 0, horizontal=True)
        s["backend"] = backend
        if backend == "Local model":
            save_dir = Path(args.save_dir)
            models = discover_models(save_dir)
            custom = "Other path…"
            labels = [m["label"] for m in models] + [custom]
            default = preselect(models, args)
            default = len(labels) - 1 if default is None else default
            label = st.selectbox("Model", labels, index=default, key="model_choice",
                                 help=f"native weights from {save_dir} and transformers folders under the repo")
            if label == custom:
                path = st.text_input("Model path", key="custom_path",
                                     value=args.load_from if args.load_from not in (None, "model") else "",
                                     placeholder="a transformers folder or out/{weight}_{hidden}.pth")
                choice = custom_choice(path.strip())
            else:
                choice = models[labels.index(label)]
            s["choice"] = choice
            loras = find_lora_adapters(save_dir, choice) if choice else []
            s["lora"] = None
            if loras:
                pick = st.selectbox("LoRA adapter", ["(none)"] + loras, key="lora")
                s["lora"] = None if pick == "(none)" else pick
        else:
            s["api_base"] = st.text_input("Base URL", value=args.api_base or DEFAULT_API_BASE, key="api_base")
            s["api_key"] = st.text_input("API key", value=args.api_key, type="password", key="api_key")
            s["api_model"] = st.text_input("Model name", value=args.api_model, key="api_model")
        s["system"] = st.text_area("System prompt", value="", key="system_prompt",
                                   placeholder="e.g. You are MiniMind, a helpful assistant.")
        s["temperature"] = st.slider("Temperature (0 = greedy)", 0.0, 1.5, float(args.temperature), 0.05,
                                     key="temperature")
        s["top_p"] = st.slider("Top-p", 0.05, 1.0, float(args.top_p), 0.05, key="top_p")
        s["max_new_tokens"] = st.slider("Max new tokens", 16, 8192, int(args.max_new_tokens), 16,
                                        key="max_new_tokens")
        s["repetition_penalty"] = st.slider("Repetition penalty", 1.0, 1.5, 1.0, 0.05, key="repetition_penalty")
        s["history_rounds"] = st.slider("History rounds", 0, 10, int(args.history_rounds), key="history_rounds",
                                        help="earlier user/assistant exchanges sent with each question")
        # Two switches: whether the model thinks (the template's switch), and whether the page shows it. The first
        # is drawn once the model is loaded (`thinking_toggle`): its default is the loaded template's own.
        s["thinking_slot"] = st.empty()
        s["show_thinking"] = st.toggle("Show thinking", value=True, key="show_thinking",
                                       help="display only: a reasoning model's <think> block, in a collapsible box")
        asked = TOOL_NAMES if args.tools.strip() == "all" else [t.strip() for t in args.tools.split(",") if t.strip()]
        picked = [t for t in asked if t in TOOL_NAMES]
        if len(picked) < len(asked):
            st.error(f"--tools: unknown tool(s) {', '.join(t for t in asked if t not in TOOL_NAMES)}; known: "
                     f"{', '.join(TOOL_NAMES)}")
        s["tools"] = st.multiselect("Tools", TOOL_NAMES, default=picked, key="tools",
                                    help="tools the model may call (model/tools.py); calls run here and their "
                                         "results go back to the model")
        st.button("Clear chat", on_click=clear_chat, key="clear")
    return s


def thinking_toggle(s: dict, args, tokenizer) -> bool:
    """The sidebar's "Thinking" switch: on, the model may reason in a <think> block; off, the template pre-fills an
    empty one. It starts as -- --enable_thinking says, else as the loaded template does by default (ours: on;
    upstream minimind-3's: off), and on for an endpoint."""
    if args.enable_thinking is not None:
        default = bool(args.enable_thinking)
    else:
        default = True if tokenizer is None else template_default(tokenizer, False, True)
    return s["thinking_slot"].toggle("Thinking", value=default, key="thinking",
                                     help="on: the model may reason in a <think> block before answering; off: an "
                                          "empty block is pre-filled and it answers directly (the chat template's "
                                          "enable_thinking / open_thinking switch)")


def preselect(models: List[dict], args) -> Optional[int]:
    """Index of the model --load_from names (None: not listed, so the free-text path), else of --weight
    (+ the hidden size --hidden_size / --preset give, 512 without either), else 0."""
    if args.load_from not in (None, "", "model"):
        for i, m in enumerate(models):
            if m["kind"] == "hf" and Path(m["path"]) == Path(args.load_from).resolve():
                return i
        return None
    if not models:
        return None
    same_name = [i for i, m in enumerate(models) if m["kind"] == "native" and m["weight"] == args.weight]
    hidden = model_config_from_args(args).hidden_size  # --hidden_size defaults to None: the preset's size
    for i in same_name:
        if models[i]["hidden_size"] == hidden:
            return i
    return same_name[0] if same_name else 0


def custom_choice(path: str) -> Optional[dict]:
    """The model a typed path names: a transformers folder, or a native {weight}_{hidden}[_moe].pth file."""
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists():
        p = ROOT / p  # relative paths resolve from the repo root, like every other default here
    if p.is_dir():
        return {"kind": "hf", "label": str(p), "path": str(p.resolve())}
    if not p.is_file():
        st.sidebar.error(f"{p}: no such folder or .pth file")
        return None
    info = inspect_native(p)
    if info is None:
        st.sidebar.error(f"{p}: not a whole MiniMind model saved as {{weight}}_{{hidden}}[_moe].pth")
        return None
    return {"kind": "native", "label": str(p), "path": str(p.resolve()), **info}


def stream_into_message(events: Iterator[Tuple[str, object]], show_thinking: bool, reply: dict) -> List[dict]:
    """Inside an assistant chat message: reasoning into an expander (redrawn in place, at most ~10 times a
    second), the answer through st.write_stream. `reply["content"]` / `reply["thinking"]` grow as text arrives,
    so the caller still has the partial reply if the run is stopped or interrupted by a new question.
    Returns the tool calls of the reply ({"name", "arguments"[, "id"]}, in order)."""
    calls = []
    think_slot = st.empty()
    last_draw = [0.0]

    def draw_thinking(finished: bool):
        if show_thinking and reply["thinking"]:
            box = think_slot.expander("💭 Thinking" if finished else "💭 Thinking…", expanded=not finished)
            box.markdown(hard_breaks(reply["thinking"]))
        last_draw[0] = time.monotonic()

    def answer_deltas():
        answered = False
        for kind, text in events:
            if kind == "tool_call":
                calls.append(text)
                continue
            if kind == "reasoning":
                reply["thinking"] += text
                if time.monotonic() - last_draw[0] > 0.1:
                    draw_thinking(finished=False)
                continue
            if not answered:  # the first answer text closes the thinking box
                answered = True
                draw_thinking(finished=True)
            reply["content"] += text
            yield text
        if not answered:  # no answer text: still thinking (cut off), unless the turn was tool calls
            draw_thinking(finished=bool(calls))

    st.write_stream(answer_deltas())
    if not reply["content"] and not calls:
        st.markdown("*(empty reply)*")
    return calls


def answer_with_tools(stream_round, conversation: List[dict], tools: List[str], show_thinking: bool,
                      reply: dict):
    """The call -> result -> answer loop inside the assistant message, played by model/tool_loop.py (the same loop
    as agent RL and the tool eval): each turn streams into the message; a turn of tool calls is shown call by call
    with its result (run by the loop, model/tools.py), and the next turn streams after it.
    `stream_round(messages, schemas)` yields reply_events' events. Finished rounds go to reply["steps"], the last
    turn's text to reply["content"]."""
    episode = Episode(messages=list(conversation), tools=tool_schemas(tools) if tools else None)

    def show_calls(turn):  # a finished round of calls: into reply["steps"], shown with their results
        step = {"thinking": reply["thinking"], "text": reply["content"], "calls": []}
        reply["steps"].append(step)
        reply["thinking"] = reply["content"] = ""
        for r in turn.results:
            step["calls"].append(r)
            show_tool_call(r)

    def policy(episodes):  # one streamed turn
        if episode.turns:
            show_calls(episode.turns[-1])
        calls = stream_into_message(stream_round(episode.messages, episode.tools), show_thinking, reply)
        valid, invalid = split_valid([{"name": c["name"], "arguments": c["arguments"] if isinstance(
            c["arguments"], str) else json.dumps(c["arguments"], ensure_ascii=False)} for c in calls])
        return [Turn(reply["content"], valid, invalid, reply["thinking"])]

    run_turns([episode], policy, MAX_TOOL_ROUNDS + 1)
    last = episode.turns[-1]
    if last.calls:  # still calling tools after the last round: show them, say so
        show_calls(last)
        st.warning(f"Still calling tools after {MAX_TOOL_ROUNDS} rounds; stopped here.")


def main():
    st.set_page_config(page_title="MiniMind chat", page_icon="🤖", layout="centered")
    args = parse_cli()
    if "messages" not in st.session_state:
        st.session_state.messages = []
    s = sidebar(args)

    model = tokenizer = None
    if s["backend"] == "Local model":
        choice = s.get("choice")
        if choice is None:
            st.info(f"No model found in {args.save_dir}. Train one (trainer/train_full_sft.py), pass "
                    f"`-- --save_dir DIR`, or type a path in the sidebar.")
            st.stop()
        margs = model_args(args, choice, s["lora"])
        key = tuple(sorted(vars(margs).items()))
        try:
            with st.spinner(f"Loading {choice['label']}…"):
                model, tokenizer, name = get_model(key, margs)
        except LOAD_ERRORS as e:
            st.error(f"Could not load {choice['path']}: {e}")
            st.stop()
        caption = f"Local model **{name}** on `{next(model.parameters()).device}`"
    else:
        caption = f"API endpoint `{s['api_base']}` · model **{s['api_model']}**"
    st.caption(caption)
    s["thinking"] = thinking_toggle(s, args, tokenizer)

    for msg in st.session_state.messages:
        render_message(msg, s["show_thinking"])

    question = st.chat_input("Ask MiniMind anything")
    if not question:
        return
    user_msg = {"role": "user", "content": question}
    render_message(user_msg, s["show_thinking"])
    conversation = trim_history(st.session_state.messages, s["history_rounds"]) + [user_msg]
    if s["system"].strip():
        conversation = [{"role": "system", "content": s["system"].strip()}] + conversation
    st.session_state.messages.append(user_msg)

    reply = {"role": "assistant", "content": "", "thinking": "", "steps": []}
    finished = False

    def stream_round(messages, schemas):
        if model is not None:
            prompt = chat_prompt(tokenizer, messages, schemas, enable_thinking=s["thinking"])
            pieces = local_pieces(model, tokenizer, prompt, s["max_new_tokens"], s["temperature"], s["top_p"],
                                  s["repetition_penalty"])
            return reply_events(pieces, bool(schemas), in_thinking=prompt.rstrip().endswith("<think>"))
        pieces = api_pieces(s["api_base"], s["api_key"], s["api_model"], messages, s["max_new_tokens"],
                            s["temperature"], s["top_p"], schemas, thinking=s["thinking"])
        return reply_events(pieces, bool(schemas))

    with st.chat_message("assistant"):
        try:
            answer_with_tools(stream_round, conversation, s["tools"], s["show_thinking"], reply)
            finished = True
        except APIError as e:  # a dead or refusing endpoint is a message, not a crash
            st.error(f"Request to {s['api_base']} failed: {e}")
        finally:
            # Also runs when the user presses Stop or sends the next question mid-reply (streamlit interrupts
            # the run with an exception): keep what arrived, so history stays user/assistant pairs.
            if finished or reply["content"] or reply["thinking"] or reply["steps"]:
                st.session_state.messages.append(reply)
            else:
                st.session_state.messages.pop()  # nothing came back: drop the unanswered question


if __name__ == "__main__":  # streamlit runs this file as __main__; tests import it for the helpers
    main()
