"""Datasets for every MiniMind stage, in one place so the data formats live in one file.

| class            | record                                               | used by                               |
|------------------|------------------------------------------------------|---------------------------------------|
| PretrainDataset  | {"text": ...}                                        | pretrain                              |
| SFTDataset       | {"conversations": [{role, content}, ...], "tools"?}  | full_sft, lora, distillation, reason  |
| DPODataset       | {"chosen": [turns], "rejected": [turns]}             | dpo                                   |
| RLAIFDataset     | {"conversations": [...]} or {"question", "answer"}   | ppo, grpo, spo                        |

Files may be far larger than RAM, so nothing is `json.load`-ed into a list: `JsonlFile` validates the file
once, keeps only the byte offset of each good line (8 bytes per record, cached on disk next to a hash of the
file), and each `__getitem__` seeks to its line. A malformed line stops with `file:line: reason`, or is
skipped and counted with `skip_bad_lines=True` (`--skip_bad_lines`).
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("MINIMIND_CACHE", ROOT / ".cache"))
IGNORE_INDEX = -100


class DataFormatError(ValueError):
    """A record that does not match its dataset's format; the message names file:line."""


# ----------------------------------------------------------------------------------------------------------------
# Record validators: return None if fine, else a short reason.
# ----------------------------------------------------------------------------------------------------------------
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
    return None


def check_dpo(rec):
    for key in ("chosen", "rejected"):
        reason = _check_turns(rec.get(key), key)
        if reason:
            return reason
        if rec[key][-1]["role"] != "assistant":
            return f'"{key}" must end with an assistant turn'
    return None


def check_rlaif(rec):
    if isinstance(rec.get("question"), str):
        return None
    return _check_turns(rec.get("conversations"))


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
        key = f"{file_fingerprint(self.path)}_{check.__name__}_{int(skip_bad_lines)}"
        cache = CACHE_DIR / "jsonl_index" / f"{self.path.stem}_{key}.npz"
        if use_cache and cache.exists():
            z = np.load(cache)
            self.offsets, self.line_numbers, self.n_bad = z["offsets"], z["line_numbers"], int(z["n_bad"])
        else:
            self.offsets, self.line_numbers, self.n_bad = self._scan(skip_bad_lines)
            if use_cache:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
                np.savez(tmp, offsets=self.offsets, line_numbers=self.line_numbers, n_bad=self.n_bad)
                os.replace(tmp, cache)
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

    def location(self, i) -> str:
        return f"{self.path}:{int(self.line_numbers[i])}"

    def __getstate__(self):  # picklable for spawn-based workers
        state = dict(self.__dict__)
        state["_fh"] = None
        return state


# ----------------------------------------------------------------------------------------------------------------
# Chat-template helpers shared by SFT / DPO / RLAIF
# ----------------------------------------------------------------------------------------------------------------
def to_messages(turns):
    """Conversation turns -> chat-template messages (extra fields such as tool_calls pass through)."""
    return [dict(t, content=t.get("content") or "") for t in turns]


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


class _ChatDataset(Dataset):
    check = staticmethod(check_sft)

    def __init__(self, data_path, tokenizer, max_length: int = 512, skip_bad_lines: bool = False,
                 enable_thinking: Optional[bool] = None):
        self.data = JsonlFile(data_path, self.check, skip_bad_lines)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.enable_thinking = enable_thinking
        self.bos_id, self.eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        assert self.bos_id is not None and self.eos_id is not None, "tokenizer needs bos (<|im_start|>) and eos"
        self.header_ids = tokenizer("assistant\n", add_special_tokens=False).input_ids

    def __len__(self):
        return len(self.data)

    def render(self, turns, tools=None, add_generation_prompt=False) -> str:
        kwargs = {}
        if self.enable_thinking is not None:
            kwargs["enable_thinking"] = self.enable_thinking
        return self.tokenizer.apply_chat_template(to_messages(turns), tools=tools, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt, **kwargs)

    def encode_chat(self, turns, tools=None, last_only=False):
        ids = self.tokenizer(self.render(turns, tools), add_special_tokens=False).input_ids[:self.max_length]
        mask = assistant_mask(ids, self.bos_id, self.eos_id, self.header_ids, last_only)
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
        return ids, labels


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
        ids, labels = self.encode_chat(rec["conversations"], rec.get("tools"))
        return {"input_ids": ids, "labels": labels}


class DPODataset(_ChatDataset):
    """Preference pairs; only the final assistant turn (the response) carries labels."""
    check = staticmethod(check_dpo)

    def __getitem__(self, i):
        rec = self.data[i]
        c_ids, c_labels = self.encode_chat(rec["chosen"], rec.get("tools"), last_only=True)
        r_ids, r_labels = self.encode_chat(rec["rejected"], rec.get("tools"), last_only=True)
        return {"chosen_input_ids": c_ids, "chosen_labels": c_labels,
                "rejected_input_ids": r_ids, "rejected_labels": r_labels}


class RLAIFDataset(_ChatDataset):
    """Prompts for on-policy RL: the conversation minus its final assistant placeholder, rendered with the
    generation prompt. GSM8K-style {"question", "answer"} records give the question as prompt and keep the
    reference answer for rule rewards."""
    check = staticmethod(check_rlaif)

    def __getitem__(self, i):
        rec = self.data[i]
        if "question" in rec:
            turns, answer = [{"role": "user", "content": rec["question"]}], str(rec.get("answer", ""))
        else:
            turns = rec["conversations"]
            answer = ""
            if turns[-1]["role"] == "assistant":
                answer = turns[-1].get("content") or ""
                turns = turns[:-1]
        return {"prompt": self.render(turns, rec.get("tools"), add_generation_prompt=True), "answer": answer}


# ----------------------------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------------------------
class PadCollator:
    """Stacks variable-length samples, padding each batch only to its own longest sample (dynamic padding).

    `pad_to` forces every batch to that length (the original MiniMind's behaviour; kept for comparisons).
    Keys ending in `labels` are padded with -100, everything else with `pad_id`; an `attention_mask` is added
    for each `*input_ids` key. DPO samples are returned as one batch [chosen; rejected].
    """

    def __init__(self, pad_id: int = 0, pad_to: Optional[int] = None):
        self.pad_id, self.pad_to = pad_id, pad_to

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
        out = {}
        for key in batch[0]:
            seqs = [b[key] for b in batch]
            if not isinstance(seqs[0], (list, tuple)):
                out[key] = seqs
                continue
            out[key] = self._pad(seqs, IGNORE_INDEX if key.endswith("labels") else self.pad_id, length)
            if key.endswith("input_ids"):
                lens = torch.tensor([min(len(s), length) for s in seqs])
                out[key.replace("input_ids", "attention_mask")] = (
                    torch.arange(length)[None, :] < lens[:, None]).long()
        return out
