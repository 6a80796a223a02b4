"""Datasets for every MiniMind stage, in one place so the data formats live in one file.

| class            | record                                               | used by                               |
|------------------|------------------------------------------------------|---------------------------------------|
| PretrainDataset  | {"text": ...}                                        | pretrain                              |
| SFTDataset       | {"conversations": [{role, content}, ...], "tools"?}  | full_sft, lora, distillation, reason  |
| DPODataset       | {"chosen": [turns], "rejected": [turns]}             | dpo                                   |
| RLAIFDataset     | {"conversations": [...]} or {"question", "answer"}   | ppo, grpo, spo                        |
| AgentRLDataset   | {"conversations": [...], "gt": [answers]}            | agentic RL (upstream agent_rl.jsonl)  |

Conversations follow the OpenAI / upstream minimind-3 message layout: `tools` (the function schemas) on the
system message or at the top of the record, `tool_calls` on assistant messages, `reasoning_content` on assistant
messages, `tool` messages for results. `tools` and `tool_calls` may be lists or JSON strings (upstream's files
store strings); a string that is not valid JSON stops with `file:line`. `chat_messages` turns either spelling
into what chat templates expect.

Files may be far larger than RAM, so nothing is `json.load`-ed into a list: `JsonlFile` validates the file
once, keeps only the byte offset of each good line (8 bytes per record, cached on disk next to a hash of the
file), and each `__getitem__` seeks to its line. A malformed line stops with `file:line: reason`, or is
skipped and counted with `skip_bad_lines=True` (`--skip_bad_lines`).

Upstream minimind-3's two SFT data habits are seeded, optional augmentations of the chat datasets (SFT, LoRA,
distillation, DPO: `--drop_empty_think`, `--add_system_ratio`; see `add_augment_args`), and the RL prompt datasets
draw each prompt's thinking switch (`thinking_ratio`). Every such draw comes from `sample_rng(seed, epoch, index)`,
so a sample looks the same whenever it is read: an interrupted and resumed run trains on exactly what an
uninterrupted one does, and every epoch draws afresh (the trainer calls `set_epoch`).

Truncation can leave a sample nothing to learn from (a system prompt longer than --max_seq_len): the trainers call
`check_trainable` once before training, which stops a run where most samples are in that state and warns where
some are.
"""
import argparse
import hashlib
import json
import math
import os
import random
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from model.atomic_io import atomic_write, atomic_write_text
from model.chat_template import template_default, thinking_kwargs
from model.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("MINIMIND_CACHE", ROOT / ".cache"))
IGNORE_INDEX = -100
CHECKS_VERSION = 2  # bump when a record validator gets stricter (cached indexes are keyed by it)


class DataFormatError(UserError, ValueError):
    """A record that does not match its dataset's format; the message names file:line."""


class DataLengthError(UserError, ValueError):
    """Cut to --max_seq_len / --max_prompt_len, most samples keep nothing to train on (see `check_trainable`)."""


# ----------------------------------------------------------------------------------------------------------------
# Record validators: return None if fine, else a short reason.
# ----------------------------------------------------------------------------------------------------------------
def _json_list(value, where: str, field: str):
    """`value` as a list: a list as is, a JSON string parsed (upstream stores `tools` / `tool_calls` as strings),
    None / "" / [] as None. Raises DataFormatError(reason) for anything else (the caller adds file:line)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataFormatError(f'{where}["{field}"] is not valid JSON ({e})') from None
    if isinstance(value, dict) and field == "tool_calls":
        value = [value]  # a single call written without its list
    if not isinstance(value, list):
        raise DataFormatError(f'{where}["{field}"] must be a list (or a JSON string of one), '
                              f'got {type(value).__name__}')
    return value or None


def _check_tools(tools, where: str):
    for j, tool in enumerate(tools):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise DataFormatError(f'{where}["tools"][{j}] must be a function schema with a "name"')


def _check_tool_calls(calls, where: str):
    for j, call in enumerate(calls):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise DataFormatError(f'{where}["tool_calls"][{j}] must be {{"name", "arguments"}} or '
                                  f'{{"function": {{"name", "arguments"}}}}')
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as e:
                raise DataFormatError(f'{where}["tool_calls"][{j}] arguments are not valid JSON ({e})') from None
        if args is not None and not isinstance(args, dict):
            raise DataFormatError(f'{where}["tool_calls"][{j}] arguments must be a JSON object')


def _check_turn_fields(t: dict, where: str):
    """tools / tool_calls / reasoning_content on one message; raises DataFormatError(reason)."""
    tools = _json_list(t.get("tools"), where, "tools")
    if tools:
        if t["role"] != "system":
            raise DataFormatError(f'{where} has "tools", which belong on the system message')
        _check_tools(tools, where)
    calls = _json_list(t.get("tool_calls"), where, "tool_calls")
    if calls:
        if t["role"] != "assistant":
            raise DataFormatError(f'{where} has "tool_calls", which belong on assistant messages')
        _check_tool_calls(calls, where)
    reasoning = t.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise DataFormatError(f'{where}["reasoning_content"] must be a string')


def _check_turns(turns, key="conversations"):
    if not isinstance(turns, list) or not turns:
        return f'"{key}" must be a non-empty list of {{"role", "content"}} turns'
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or "role" not in t:
            return f'"{key}"[{i}] must be an object with a "role"'
        if t["role"] not in ("system", "user", "assistant", "tool"):
            return f'"{key}"[{i}] has unknown role {t["role"]!r}'
        if not isinstance(t.get("content", ""), str) and t.get("content") is not None:
            return f'"{key}"[{i}]["content"] must be a string'
        try:
            _check_turn_fields(t, f'"{key}"[{i}]')
        except DataFormatError as e:
            return str(e)
    return None


def _check_record_tools(rec):
    """The record-level "tools" (our layout) beside the system message's (upstream's): valid, and not both."""
    try:
        tools = _json_list(rec.get("tools"), "record", "tools")
    except DataFormatError as e:
        return str(e)
    if tools:
        try:
            _check_tools(tools, "record")
        except DataFormatError as e:
            return str(e)
        for key in ("conversations", "chosen", "rejected"):
            turns = rec.get(key) or []
            if any(isinstance(t, dict) and t.get("role") == "system" and _json_list(t.get("tools"), "", "tools")
                   for t in turns):
                return f'tools are given twice: at the top of the record and on the "{key}" system message'
    return None


def check_pretrain(rec):
    if not isinstance(rec.get("text"), str):
        return 'expected {"text": "<string>"}'
    return None


def check_sft(rec):
    reason = _check_turns(rec.get("conversations"))
    if reason:
        return reason
    if not any(t["role"] == "assistant" for t in rec["conversations"]):
        return "conversation has no assistant turn to learn from"
    return _check_record_tools(rec)


def check_dpo(rec):
    for key in ("chosen", "rejected"):
        reason = _check_turns(rec.get(key), key)
        if reason:
            return reason
        if rec[key][-1]["role"] != "assistant":
            return f'"{key}" must end with an assistant turn'
    return _check_record_tools(rec)


def _check_gt(rec, required: bool):
    gt = rec.get("gt")
    if gt is None and not required:
        return None
    if not isinstance(gt, list) or not gt or not all(
            isinstance(g, (str, int, float)) and not isinstance(g, bool) for g in gt):
        return '"gt" must be a non-empty list of answers (strings or numbers)'
    return None


def check_rlaif(rec):
    if isinstance(rec.get("question"), str):
        return None
    return _check_turns(rec.get("conversations")) or _check_record_tools(rec) or _check_gt(rec, required=False)


def check_agent_rl(rec):
    reason = _check_turns(rec.get("conversations")) or _check_record_tools(rec) or _check_gt(rec, required=True)
    if reason:
        return reason
    if not any(t["role"] == "user" for t in rec["conversations"]):
        return "conversation has no user turn to answer"
    n = rec.get("n_calls")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        return '"n_calls" (the number of tool calls the task needs) must be a whole number >= 0'
    return None


def iter_jsonl(path):
    """(line number, parsed value) for each non-blank line of a small JSONL file (prompt lists, eval sets), read
    once from start to end; a line that is not JSON raises DataFormatError naming file:line. Training data goes
    through `JsonlFile` instead (random access, validated records, --skip_bad_lines)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            yield lineno, rec


# ----------------------------------------------------------------------------------------------------------------
# Byte-offset index over a JSONL file
# ----------------------------------------------------------------------------------------------------------------
def file_fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


class JsonlFile:
    """Random access to the valid records of a JSONL file by byte offset."""

    def __init__(self, path, check: Callable[[dict], Optional[str]], skip_bad_lines: bool = False,
                 use_cache: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"data file not found: {self.path}")
        self.check = check
        # CHECKS_VERSION: an index built before the validators learned a rule must not vouch for the file.
        key = f"{file_fingerprint(self.path)}_{check.__name__}{CHECKS_VERSION}_{int(skip_bad_lines)}"
        cache = CACHE_DIR / "jsonl_index" / f"{self.path.stem}_{key}.npz"
        if use_cache and cache.exists():
            z = np.load(cache)
            self.offsets, self.line_numbers, self.n_bad = z["offsets"], z["line_numbers"], int(z["n_bad"])
        else:
            self.offsets, self.line_numbers, self.n_bad = self._scan(skip_bad_lines)
            if use_cache:
                atomic_write(cache, lambda f: np.savez(f, offsets=self.offsets, line_numbers=self.line_numbers,
                                                       n_bad=self.n_bad))
        if len(self.offsets) == 0:
            raise DataFormatError(f"{self.path}: no valid records")
        self._fh = None

    def _scan(self, skip_bad_lines):
        offsets, lines, n_bad = [], [], 0
        with open(self.path, "rb") as f:
            pos, lineno = 0, 0
            for raw in f:
                lineno += 1
                start, pos = pos, pos + len(raw)
                if not raw.strip():
                    continue  # blank lines are not records
                try:
                    rec = json.loads(raw)
                    reason = self.check(rec) if isinstance(rec, dict) else "a record must be a JSON object"
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    reason = f"invalid JSON ({e})"
                if reason:
                    if not skip_bad_lines:
                        raise DataFormatError(f"{self.path}:{lineno}: {reason} "
                                              f"(pass --skip_bad_lines to skip and count bad lines)")
                    n_bad += 1
                    continue
                offsets.append(start)
                lines.append(lineno)
        if n_bad:
            print(f"[data] {self.path}: skipped {n_bad} bad line(s)")
        return np.asarray(offsets, dtype=np.int64), np.asarray(lines, dtype=np.int64), n_bad

    def __len__(self):
        return len(self.offsets)

    def __getitem__(self, i) -> dict:
        # One handle per process: DataLoader workers are forked after construction and must not share a
        # file position, so the handle is opened lazily (and reopened if the pid changed).
        if self._fh is None or self._pid != os.getpid():
            self._fh, self._pid = open(self.path, "rb"), os.getpid()
        self._fh.seek(int(self.offsets[i]))
        return json.loads(self._fh.readline())

    def byte_lengths(self) -> np.ndarray:
        """Each record's size in bytes: a free, good proxy of its token length (for length-grouped batching)."""
        size = self.path.stat().st_size
        return np.diff(np.append(self.offsets, size))

    def location(self, i) -> str:
        return f"{self.path}:{int(self.line_numbers[i])}"

    def __getstate__(self):  # picklable for spawn-based workers
        state = dict(self.__dict__)
        state["_fh"] = None
        return state

    def close(self):
        if getattr(self, "_fh", None) is not None:
            self._fh.close()
            self._fh = None

    __del__ = close  # the lazily opened handle is closed with the object (no ResourceWarning at exit)


# ----------------------------------------------------------------------------------------------------------------
# Chat-template helpers shared by SFT / DPO / RLAIF
# ----------------------------------------------------------------------------------------------------------------
def chat_messages(turns, tools=None):
    """Conversation turns (either layout, validated) -> (messages, tools) for `apply_chat_template`.

    - `tools` from the argument (a record's top-level field) or else from the system message, parsed if it is a
      JSON string; the system message itself no longer carries it (templates take tools as their own argument).
    - `tool_calls` parsed if it is a JSON string (a template iterating over a string would render characters).
    - `reasoning_content` that is empty is dropped: "no reasoning" is no <think> block in our template (an empty
      one would teach the model to open every reply with it). Templates that always render the block, like
      minimind-3's, render it anyway.
    - None or missing content -> "" (an assistant turn that only calls tools); other fields pass through.
    Applying it twice gives the same result.
    """
    tools = _json_list(tools, "record", "tools")
    messages = []
    for t in turns:
        m = dict(t, content=t.get("content") or "")
        if m["role"] == "system" and "tools" in m:
            tools = tools or _json_list(m.pop("tools"), "system", "tools")
        m.pop("tools", None)
        calls = _json_list(m.pop("tool_calls", None), "message", "tool_calls")
        if calls:
            m["tool_calls"] = calls
        if not (isinstance(m.get("reasoning_content"), str) and m["reasoning_content"].strip()):
            m.pop("reasoning_content", None)
        messages.append(m)
    return messages, tools


def to_messages(turns):
    """Conversation turns -> chat-template messages (see `chat_messages`, which also returns the tools)."""
    return chat_messages(turns)[0]


def assistant_mask(input_ids, bos_id: int, eos_id: int, header_ids, last_only: bool = False):
    """1 for the tokens the model must learn: each assistant turn's content plus its closing <|im_end|>.

    A turn starts right after `<|im_start|>assistant\\n` and ends at the first `<|im_end|>` (inclusive); the
    header itself, system, user and tool turns stay 0. With `last_only`, only the final assistant turn counts
    (DPO: the response after the shared prompt). A turn cut off by truncation is masked up to the end.
    """
    mask = [0] * len(input_ids)
    start_seq = [bos_id] + list(header_ids)
    n = len(start_seq)
    spans, i = [], 0
    while i <= len(input_ids) - n:
        if input_ids[i:i + n] == start_seq:
            s = i + n
            e = s
            while e < len(input_ids) and input_ids[e] != eos_id:
                e += 1
            spans.append((s, min(e + 1, len(input_ids))))
            i = e + 1
        else:
            i += 1
    if last_only and spans:
        spans = spans[-1:]
    for s, e in spans:
        for j in range(s, e):
            mask[j] = 1
    return mask


# ----------------------------------------------------------------------------------------------------------------
# Seeded per-sample draws: upstream minimind-3's SFT augmentations and the RL prompts' thinking switch
# ----------------------------------------------------------------------------------------------------------------
EMPTY_THINK = "<think>\n\n</think>\n\n"
# Our own short system prompts (English and Chinese), one picked at random for --add_system_ratio of the samples:
# the model learns that a system prompt may or may not be there, and to answer the user either way.
SYSTEM_PROMPTS = (
    "You are MiniMind, a helpful assistant.",
    "You are a helpful assistant. Answer clearly and concisely.",
    "You are a small language model. Answer the user's question as well as you can.",
    "You are a friendly AI assistant.",
    "你是 MiniMind，一个乐于助人的助手。",
    "你是一个知识丰富的 AI 助手，请准确地回答用户的问题。",
    "你是一个友好的聊天机器人。",
    "请用简洁清晰的语言回答用户的问题。",
)
# Upstream minimind-3's values (its SFTDataset and DPODataset): with its template every assistant turn carries a
# <think> block, empty when there is no reasoning, and 80% of the samples lose the empty ones; 20% of the samples
# without tools get a system prompt. Ours (`chat_messages` already drops empty reasoning, so our template renders
# no empty block to drop): 0 and 0, the behaviour before these flags existed (README: "Upstream minimind-3's SFT
# data habits" says why).
AUGMENT_DEFAULTS = {"drop_empty_think": (0.8, 0.0), "add_system_ratio": (0.2, 0.0)}  # (minimind-3's, ours)


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The random stream of one sample in one epoch: the same in every process, worker and resumed run (a string
    seed is hashed with SHA-512, never with Python's per-process hash)."""
    return random.Random(f"minimind-sample/{seed}/{epoch}/{index}")


class SampleDraw(NamedTuple):
    system: Optional[str] = None       # a system prompt to add (None: none)
    drop_empty_think: bool = False     # remove the empty <think></think> blocks from the rendered text
    thinking: Optional[bool] = None    # the template's thinking switch (None: the template's default)


def probability(text: str) -> float:
    """argparse type of a probability flag: a float in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {text}")
    return value


def add_augment_args(parser):
    """The SFT augmentation flags (full_sft, lora, distillation, dpo); resolve them with `augment_kwargs`."""
    parser.add_argument("--drop_empty_think", type=probability, default=None,
                        help="probability that a sample loses its empty <think>\\n\\n</think>\\n\\n blocks "
                             "(default: 0.8 with upstream minimind-3's template, as upstream; 0 with ours, whose "
                             "template renders none)")
    parser.add_argument("--add_system_ratio", type=probability, default=None,
                        help="probability that a sample without tools and without a system prompt gets a random "
                             "one from dataset/lm_dataset.SYSTEM_PROMPTS (default: 0.2 with upstream minimind-3's "
                             "template, as upstream; 0 with ours)")
    return parser


def augment_kwargs(args, tokenizer) -> dict:
    """`add_augment_args` flags -> the chat dataset's keyword arguments: an unset flag takes upstream's value with
    upstream's minimind-3 template and ours (AUGMENT_DEFAULTS) otherwise; draws are seeded by --seed."""
    out = {"seed": args.seed}
    for name, (minimind3, ours) in AUGMENT_DEFAULTS.items():
        value = getattr(args, name)
        out[name] = template_default(tokenizer, minimind3, ours) if value is None else value
    return out


class _ChatDataset(Dataset):
    check = staticmethod(check_sft)
    # How `check_trainable` names the samples that truncation leaves with nothing to learn from.
    fit_unit = "samples"
    fit_problem = "have no trainable token after truncation to"
    fit_effect = "they contribute nothing to the loss"

    def __init__(self, data_path, tokenizer, max_length: int = 512, skip_bad_lines: bool = False,
                 enable_thinking: Optional[bool] = None, *, drop_empty_think: float = 0.0,
                 add_system_ratio: float = 0.0, thinking_ratio: Optional[float] = None, seed: int = 42):
        """`drop_empty_think` / `add_system_ratio`: upstream's SFT augmentations (see `add_augment_args`);
        `thinking_ratio` (not None): the share of samples rendered with the thinking switch on, in place of
        `enable_thinking`. Each sample's draws come from `sample_rng(seed, epoch, index)`."""
        self.data = JsonlFile(data_path, self.check, skip_bad_lines)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.enable_thinking = enable_thinking
        self.drop_empty_think, self.add_system_ratio = drop_empty_think, add_system_ratio
        self.thinking_ratio, self.seed, self.epoch = thinking_ratio, seed, 0
        self.bos_id, self.eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        assert self.bos_id is not None and self.eos_id is not None, "tokenizer needs bos (<|im_start|>) and eos"
        self.header_ids = tokenizer("assistant\n", add_special_tokens=False).input_ids

    def __len__(self):
        return len(self.data)

    def set_epoch(self, epoch: int):
        """The epoch whose draws __getitem__ makes (trainer_utils.Batches sets it before each epoch)."""
        self.epoch = epoch

    def draw(self, i) -> SampleDraw:
        """Sample i's augmentation and thinking switch this epoch. All four numbers are always drawn, in this order,
        so one flag's value never changes what another flag draws."""
        rng = sample_rng(self.seed, self.epoch, i)
        add, pick, drop, think = rng.random(), rng.random(), rng.random(), rng.random()
        return SampleDraw(system=SYSTEM_PROMPTS[int(pick * len(SYSTEM_PROMPTS))] if add < self.add_system_ratio
                          else None,
                          drop_empty_think=drop < self.drop_empty_think,
                          thinking=self.enable_thinking if self.thinking_ratio is None else think < self.thinking_ratio)

    def render(self, turns, tools=None, add_generation_prompt=False, draw: Optional[SampleDraw] = None) -> str:
        """The conversation as template text; `draw` (see `draw`) applies a sample's augmentations and switch."""
        draw = draw or SampleDraw(thinking=self.enable_thinking)
        messages, tools = chat_messages(turns, tools)
        # Upstream's habit: a system prompt only where there are no tools (whose schemas belong to the system turn)
        # and none already.
        if draw.system and not tools and messages and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": draw.system}] + messages
        # The switch reaches the template under the name it reads (ours: enable_thinking; upstream minimind-3's:
        # open_thinking), so --tokenizer_path with either tokenizer behaves the same.
        kwargs = thinking_kwargs(self.tokenizer, enable_thinking=draw.thinking)
        text = self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt, **kwargs)
        return text.replace(EMPTY_THINK, "") if draw.drop_empty_think else text

    def encode_chat(self, turns, tools=None, last_only=False, draw: Optional[SampleDraw] = None):
        text = self.render(turns, tools, draw=draw)
        ids = self.tokenizer(text, add_special_tokens=False).input_ids[:self.max_length]
        mask = assistant_mask(ids, self.bos_id, self.eos_id, self.header_ids, last_only)
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
        return ids, labels

    def label_lengths(self, i, turns, tools=None, last_only=False):
        """(the shortest max_length that keeps a labelled token, the length that keeps them all) of one
        conversation of record i, from its untruncated tokens (a conversation labels no token at all only if the
        template hides the assistant header from `assistant_mask`: an error naming file:line)."""
        ids = self.tokenizer(self.render(turns, tools), add_special_tokens=False).input_ids
        mask = assistant_mask(ids, self.bos_id, self.eos_id, self.header_ids, last_only)
        if 1 not in mask:
            raise DataFormatError(f"{self.data.location(i)}: no assistant token is labelled even untruncated "
                                  f"(the chat template must render assistant turns after <|im_start|>assistant\\n)")
        return mask.index(1) + 1, len(mask) - mask[::-1].index(1)


class PretrainDataset(Dataset):
    """Plain text with BOS/EOS around each document; no padding here (the collator pads per batch)."""

    def __init__(self, data_path, tokenizer, max_length: int = 512, skip_bad_lines: bool = False):
        self.data = JsonlFile(data_path, check_pretrain, skip_bad_lines)
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __len__(self):
        return len(self.data)

    def encode(self, text: str):
        ids = self.tokenizer(text, add_special_tokens=False).input_ids[:self.max_length - 2]
        return [self.tokenizer.bos_token_id] + ids + [self.tokenizer.eos_token_id]

    def __getitem__(self, i):
        ids = self.encode(str(self.data[i]["text"]))
        return {"input_ids": ids, "labels": list(ids)}


class SFTDataset(_ChatDataset):
    """Chat data; labels are -100 everywhere except assistant content tokens and their <|im_end|>."""

    def __getitem__(self, i):
        rec = self.data[i]
        ids, labels = self.encode_chat(rec["conversations"], rec.get("tools"), draw=self.draw(i))
        return {"input_ids": ids, "labels": labels}

    def fit_lengths(self, i):
        """(shortest length that keeps a token to learn from, length that keeps all): see `check_trainable`."""
        rec = self.data[i]
        return self.label_lengths(i, rec["conversations"], rec.get("tools"))


class DPODataset(_ChatDataset):
    """Preference pairs; only the final assistant turn (the response) carries labels."""
    check = staticmethod(check_dpo)
    fit_unit = "pairs"
    fit_problem = "lose their chosen or rejected response to truncation at"

    def __getitem__(self, i):
        rec = self.data[i]
        # One draw for the pair: both sides get the same system prompt and keep or lose their empty think blocks
        # together, so the loss compares two responses to the same text (upstream draws each side apart).
        draw = self.draw(i)
        c_ids, c_labels = self.encode_chat(rec["chosen"], rec.get("tools"), last_only=True, draw=draw)
        r_ids, r_labels = self.encode_chat(rec["rejected"], rec.get("tools"), last_only=True, draw=draw)
        return {"chosen_input_ids": c_ids, "chosen_labels": c_labels,
                "rejected_input_ids": r_ids, "rejected_labels": r_labels}

    def fit_lengths(self, i):
        """A pair teaches only while BOTH responses keep a token: the loss compares the two sides. Lengths come
        from the untruncated response (the last assistant turn): cut before it, `last_only` would label an
        earlier assistant turn of the shared prompt, the same on both sides, which teaches nothing either."""
        rec = self.data[i]
        chosen = self.label_lengths(i, rec["chosen"], rec.get("tools"), last_only=True)
        rejected = self.label_lengths(i, rec["rejected"], rec.get("tools"), last_only=True)
        return max(chosen[0], rejected[0]), max(chosen[1], rejected[1])


class RLAIFDataset(_ChatDataset):
    """Prompts for on-policy RL: the conversation minus its final assistant placeholder, rendered with the
    generation prompt. GSM8K-style {"question", "answer"} records give the question as prompt and keep the
    reference answer for rule rewards.

    Each item: "prompt" (the rendered text), "prompt_ids" (its tokens; a prompt longer than `max_length` keeps
    its LAST `max_length` tokens: the question and the assistant header the response must follow; 0 = keep
    all) and "answer". With `thinking_ratio`, each prompt's thinking switch is drawn (`draw`): the RL stages'
    --thinking_ratio."""
    check = staticmethod(check_rlaif)
    fit_unit = "prompts"
    fit_problem = "are longer than"
    fit_effect = "each is cut to its last {max_len} tokens and loses its beginning (system prompt, tools, question)"

    def encode_prompt(self, i):
        """(rendered prompt, its untruncated token ids, reference answer) of record i."""
        rec = self.data[i]
        if "question" in rec:
            turns, answer = [{"role": "user", "content": rec["question"]}], str(rec.get("answer", ""))
        else:
            turns = rec["conversations"]
            answer = ""
            if turns[-1]["role"] == "assistant":
                answer = turns[-1].get("content") or ""
                turns = turns[:-1]
        # thinking_ratio: each prompt's thinking switch is drawn (upstream minimind-3 renders GRPO/PPO prompts with
        # open_thinking for 90% of them); else the dataset's enable_thinking
        prompt = self.render(turns, rec.get("tools"), add_generation_prompt=True, draw=self.draw(i))
        return prompt, self.tokenizer(prompt, add_special_tokens=False).input_ids, answer

    def __getitem__(self, i):
        prompt, ids, answer = self.encode_prompt(i)
        return {"prompt": prompt, "prompt_ids": ids[-self.max_length:] if self.max_length else ids, "answer": answer}

    def fit_lengths(self, i):
        """A prompt fits whole from its own length on (see `check_trainable`)."""
        n = len(self.encode_prompt(i)[1])
        return n, n


def collate_lists(batch: list) -> dict:
    """Batch of dicts -> dict of lists (agent episodes: messages, tools and gt do not stack into tensors)."""
    return {k: [b[k] for b in batch] for k in batch[0]}


class AgentRLDataset(_ChatDataset):
    """Episodes for agentic RL in upstream's agent_rl.jsonl / agent_rl_math.jsonl layout:

        {"conversations": [{"role": "system", "content": "", "tools": "[...schemas...]"},
                           {"role": "user", "content": "算算7109*2920"},
                           {"role": "assistant", "content": ""}],          <- placeholder, dropped
         "gt": ["20758280"], "n_calls": 1}                                  <- optional: calls the task needs

    Each item: "messages" (the conversation without its final assistant turn, normalised by `chat_messages`:
    tools and tool_calls parsed), "tools" (the schemas, or None), "gt" (the answers, as strings), "n_calls" (or
    None: the reward then assumes one call when tools are offered), "prompt" (the
    rendered text with the generation prompt), "prompt_ids" (its tokens, never cut: cutting from the left would
    drop the tool schemas, so a trainer filters long prompts itself) and "index". Batch with `collate_lists`.
    """
    check = staticmethod(check_agent_rl)
    fit_unit = "episodes"
    fit_problem = "have a prompt longer than"
    fit_effect = "they are left out (an agent prompt is never cut: its start holds the tool schemas)"

    def __getitem__(self, i):
        rec = self.data[i]
        messages, tools = chat_messages(rec["conversations"], rec.get("tools"))
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        prompt = self.render(messages, tools, add_generation_prompt=True)
        return {"messages": messages, "tools": tools, "gt": [str(g) for g in rec["gt"]], "n_calls": rec.get("n_calls"),
                "prompt": prompt,
                "prompt_ids": self.tokenizer(prompt, add_special_tokens=False).input_ids, "index": i}

    def fit_lengths(self, i):
        """A prompt fits from its own length on (see `check_trainable`)."""
        n = len(self[i]["prompt_ids"])
        return n, n


# ----------------------------------------------------------------------------------------------------------------
# Truncation check: samples that --max_seq_len leaves with nothing to learn from
# ----------------------------------------------------------------------------------------------------------------
MAX_CHECKED = 2_000  # a larger file is checked on this many records spread evenly over it (0.5-3 ms each):
# enough to tell "most" from "some" (a 2,000-record sample puts a 50% share within +-2.2%), and seconds, not a minute


def check_trainable(dataset, max_len: int, flag: str = "--max_seq_len", verbose: bool = True,
                    max_checked: int = MAX_CHECKED) -> int:
    """Count the samples of `dataset` that keep nothing to learn from when cut to `max_len` tokens (the value of
    `flag`), and stop a run that would train on (almost) nothing. Returns that count.

    Why: a system prompt with tool schemas can be longer than --max_seq_len; every such sample is then cut
    before its first assistant token, its labels are all -100 and its loss 0. A run of such samples logs
    `loss: 0.0000 grad_norm: 0.000`, finishes and saves weights it never trained. So before training:
      - more than half of the samples keep nothing (all, in that example) -> DataLengthError naming the file,
        the count and the `flag` value that fits 90% of the samples whole;
      - some do -> one warning line (only where `verbose`: rank 0), and training goes on without them;
      - none do -> nothing.
    `dataset.fit_lengths(i)` gives (the shortest length at which record i keeps something to learn from, the
    length that keeps all of it), from its untruncated tokens; each dataset says what "nothing" means: no
    assistant token (SFT, LoRA, distillation), a chosen or rejected response cut away (DPO), a prompt longer
    than --max_prompt_len (RL). `max_len` 0 means no limit. A file of more than `max_checked` records is checked
    on that many, spread evenly over it. The check is deterministic, so every DDP rank raises the same way.
    """
    if max_len <= 0:
        return 0
    from tqdm import tqdm
    n = len(dataset)
    k = min(n, max_checked)
    records = np.arange(k) * n // k  # every record, or k of them spread evenly (the same ones on every rank)
    bar = tqdm(records, desc=f"checking {flag} {max_len}", unit="record", mininterval=2,
               disable=not verbose or k < 1000)  # a bar only where the pass takes seconds
    lengths = np.array([dataset.fit_lengths(int(i)) for i in bar], dtype=np.int64)
    first, whole = lengths[:, 0], lengths[:, 1]
    n_bad = int((first > max_len).sum())
    if n_bad == 0:
        return 0
    checked = "" if k == n else f" ({k} checked, spread over its {n})"
    problem = (f"{n_bad} of {k} {dataset.fit_unit} in {dataset.data.path}{checked} {dataset.fit_problem} "
               f"{flag} {max_len}: {dataset.fit_effect.format(max_len=max_len)}")
    # The 90th percentile of the whole lengths: a longer limit mostly buys room for a few outliers.
    fit90 = int(np.sort(whole)[math.ceil(0.9 * k) - 1])
    hint = f"{flag} {fit90} fits 90% of them whole, {flag} {int(whole.max())} all of them"
    if 2 * n_bad > k:
        raise DataLengthError(f"{problem}. {hint}")
    if verbose:
        print(f"[data] warning: {problem}; training goes on with the others. {hint}", flush=True)
    return n_bad


# ----------------------------------------------------------------------------------------------------------------
# Tokenized cache + packing (pretraining)
# ----------------------------------------------------------------------------------------------------------------
def tokenizer_fingerprint(tokenizer) -> str:
    """Changes whenever the vocabulary, merges, special tokens or chat template change."""
    h = hashlib.sha1(tokenizer.backend_tokenizer.to_str().encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    return h.hexdigest()[:16]


def content_hash(path: Path) -> str:
    """sha1 of the file's bytes, memoised by (path, size, mtime) so a relaunch does not re-read gigabytes."""
    memo = CACHE_DIR / "content_hash" / f"{file_fingerprint(path)}.txt"
    if memo.exists():
        return memo.read_text().strip()
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    digest = h.hexdigest()[:16]
    atomic_write_text(memo, digest)
    return digest


class TokenCache:
    """A JSONL of {"text"} tokenized once into a flat uint16 memmap: `<stem>_<filehash>_<tokhash>.bin` holds
    every document as <|im_start|> text <|im_end|>, back to back; `.idx.npy` holds the document boundaries.

    Keyed by the file's content hash and the tokenizer's hash, so editing either rebuilds it and nothing else
    does. Training reads the memmap: memory stays flat however large the corpus is. Under DDP, rank 0 builds
    and the others wait at a barrier.
    """

    def __init__(self, data_path, tokenizer, skip_bad_lines: bool = False, cache_dir=None, batch_docs=1024):
        import torch.distributed as dist
        self.path = Path(data_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"data file not found: {self.path}")
        assert len(tokenizer) <= 65535, "uint16 token cache needs a vocabulary below 65536"
        cache_dir = Path(cache_dir or CACHE_DIR / "tokens")
        key = f"{self.path.stem}_{content_hash(self.path)}_{tokenizer_fingerprint(tokenizer)}"
        self.bin_path, self.idx_path = cache_dir / f"{key}.bin", cache_dir / f"{key}.idx.npy"
        distributed = dist.is_available() and dist.is_initialized()
        if not self.idx_path.exists() and (not distributed or dist.get_rank() == 0):
            self._build(tokenizer, skip_bad_lines, batch_docs)
        if distributed:
            dist.barrier()
        self.doc_offsets = np.load(self.idx_path)
        self.tokens = np.memmap(self.bin_path, dtype=np.uint16, mode="r")

    def _build(self, tokenizer, skip_bad_lines, batch_docs):
        from tqdm import tqdm
        data = JsonlFile(self.path, check_pretrain, skip_bad_lines)
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        offsets = [0]

        def write_tokens(out):
            with tqdm(total=len(data), desc=f"tokenizing {self.path.name}", unit="doc", mininterval=2) as bar:
                for start in range(0, len(data), batch_docs):
                    texts = [str(data[i]["text"]) for i in range(start, min(start + batch_docs, len(data)))]
                    bar.update(len(texts))
                    # The fast tokenizer encodes a batch in parallel in Rust.
                    for ids in tokenizer(texts, add_special_tokens=False).input_ids:
                        doc = np.asarray([bos] + ids + [eos], dtype=np.uint16)
                        out.write(doc.tobytes())
                        offsets.append(offsets[-1] + len(doc))

        atomic_write(self.bin_path, write_tokens)
        # The index appears last: its presence means the cache is complete.
        atomic_write(self.idx_path, lambda f: np.save(f, np.asarray(offsets, dtype=np.int64)))
        print(f"[data] cached {len(offsets) - 1} documents, {offsets[-1]:,} tokens -> {self.bin_path}")

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


class PackedPretrainDataset(Dataset):
    """Pretraining without padding: the token stream cut into fixed blocks of `max_length` tokens.

    Documents are concatenated (each <|im_start|> ... <|im_end|>), so a block may hold several documents and
    a document may continue into the next block. Every position is a real token: no compute is spent on
    padding. A document's first token (<|im_start|>) is never a prediction target, exactly as when documents
    are trained one by one.

    `doc_attention=True` additionally keeps documents from attending to each other: position ids restart at
    each document and the mask is block-diagonal causal, so a block's loss equals the documents' separate
    losses. Plain causal packing (the default) is what most pretraining does and is cheaper.
    """

    def __init__(self, data_path, tokenizer, max_length: int = 512, skip_bad_lines: bool = False,
                 doc_attention: bool = False, cache_dir=None):
        self.cache = TokenCache(data_path, tokenizer, skip_bad_lines, cache_dir)
        self.max_length, self.doc_attention = max_length, doc_attention
        self.bos_id = tokenizer.bos_token_id
        self.n_blocks = self.cache.n_tokens // max_length
        if self.n_blocks == 0:
            raise DataFormatError(f"{data_path}: only {self.cache.n_tokens} tokens, fewer than one block of "
                                  f"--max_seq_len {max_length}")

    def __len__(self):
        return self.n_blocks

    def __getitem__(self, i):
        ids = torch.from_numpy(self.cache.tokens[i * self.max_length:(i + 1) * self.max_length].astype(np.int64))
        labels = ids.clone()
        is_bos = ids == self.bos_id
        labels[is_bos] = IGNORE_INDEX
        item = {"input_ids": ids, "labels": labels}
        if self.doc_attention:
            # Document id of each position: increments at every <|im_start|>.
            doc = torch.cumsum(is_bos.long(), 0)
            starts = torch.zeros_like(ids)
            first = torch.nonzero(is_bos).flatten()
            starts[first] = first
            starts = torch.cummax(starts, 0).values
            item["position_ids"] = torch.arange(len(ids)) - starts
            item["doc_ids"] = doc
        return item


def doc_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, 1, T, T) boolean mask: causal and within the same document."""
    t = doc_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (causal & same)[:, None]


def doc_block_mask(doc_ids: torch.Tensor):
    """(B, T) document ids -> flex_attention BlockMask with the same pattern as `doc_causal_mask` (causal and
    within the same document), stored block-sparse: tiles that cross documents are skipped, not masked."""
    from torch.nn.attention.flex_attention import create_block_mask
    b, t = doc_ids.shape

    def same_doc_causal(batch, head, q_idx, kv_idx):
        return (doc_ids[batch, q_idx] == doc_ids[batch, kv_idx]) & (q_idx >= kv_idx)

    return create_block_mask(same_doc_causal, b, None, t, t, device=doc_ids.device)


def doc_attention_mask(doc_ids: torch.Tensor, impl: str = "auto"):
    """The packed-document mask for the model: `flex` (a BlockMask; "auto" picks it on CUDA, where SDPA with a
    dense boolean mask loses the flash kernel) or `sdpa` (a dense (B, 1, T, T) boolean mask; auto elsewhere)."""
    assert impl in ("auto", "sdpa", "flex"), f"unknown document attention implementation {impl!r}"
    if impl == "auto":
        impl = "flex" if doc_ids.device.type == "cuda" else "sdpa"
    if impl == "flex" and doc_ids.device.type == "cpu" and torch.is_grad_enabled():
        raise ValueError("flex_attention has no backward on the CPU in PyTorch: train with "
                         "--doc_attention_impl sdpa (or auto) there")
    return doc_block_mask(doc_ids) if impl == "flex" else doc_causal_mask(doc_ids)


def stack_collate(batch):
    """Fixed-length samples (packed blocks): a plain stack, plus an all-ones attention mask for token counts."""
    out = {k: torch.stack([b[k] for b in batch]) for k in batch[0]}
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------------------------
class PadCollator:
    """Stacks variable-length samples, padding each batch only to its own longest sample (dynamic padding).

    `pad_to` forces every batch to that length (the original MiniMind's behaviour; kept for comparisons).
    Keys ending in `labels` are padded with -100, everything else with `pad_id`; an `attention_mask` is added
    for each `*input_ids` key. DPO samples are returned as one batch [chosen; rejected].
    """

    def __init__(self, pad_id: int = 0, pad_to: Optional[int] = None, pad_multiple: int = 1):
        # pad_multiple rounds the batch length up (e.g. to 64) so torch.compile sees few distinct shapes.
        self.pad_id, self.pad_to, self.pad_multiple = pad_id, pad_to, pad_multiple

    def _pad(self, seqs, value, length):
        out = torch.full((len(seqs), length), value, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, :len(s)] = torch.as_tensor(s[:length], dtype=torch.long)
        return out

    def __call__(self, batch):
        if "chosen_input_ids" in batch[0]:  # DPO: one forward over chosen and rejected together
            batch = ([{"input_ids": b["chosen_input_ids"], "labels": b["chosen_labels"]} for b in batch]
                     + [{"input_ids": b["rejected_input_ids"], "labels": b["rejected_labels"]} for b in batch])
        length = self.pad_to or max(len(b["input_ids"]) for b in batch)
        if not self.pad_to and self.pad_multiple > 1:
            length = -(-length // self.pad_multiple) * self.pad_multiple
        out = {}
        for key in batch[0]:
            seqs = [b[key] for b in batch]
            if not isinstance(seqs[0], (list, tuple, torch.Tensor)):
                out[key] = seqs
                continue
            out[key] = self._pad(seqs, IGNORE_INDEX if key.endswith("labels") else self.pad_id, length)
            if key.endswith("input_ids"):
                lens = torch.tensor([min(len(s), length) for s in seqs])
                out[key.replace("input_ids", "attention_mask")] = (
                    torch.arange(length)[None, :] < lens[:, None]).long()
        return out
