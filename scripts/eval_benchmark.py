"""Benchmarks for MiniMind: perplexity, multiple choice (C-Eval / CMMLU / MMLU / JSONL), GSM8K, lm-eval-harness.

Subcommands

  ppl      Perplexity of a {"text"} JSONL file. Every document is wrapped as <|im_start|> text <|im_end|> (exactly
           what PretrainDataset trains on) and PPL = exp(total NLL / total scored tokens), weighted by tokens over
           all documents. Documents longer than --max_seq_len are scored with sliding windows: each window
           advances by --stride tokens and scores only the tokens the previous window did not score, using the
           rest of the window as context, so every token is scored exactly once.
           --context_sweep 256,512,1024,... instead concatenates documents into one long stream and reports PPL
           against context length twice, for the same weights with and without YaRN (MiniMindConfig
           inference_rope_scaling False/True), and draws the curve (--plot, default images/rope_ppl.png).
  mc       Multiple choice scored by the log-likelihood of the answer letter: the prompt ends in "答案：" /
           "Answer:" and the letter whose token ("A" or " A", both forms summed) is most probable at the next
           position is the prediction. k-shot examples (--shots) come from the dev split. Prints per-subject and
           overall accuracy next to the random-chance baseline (1 / number of choices). Local files in their
           official layouts (--format auto detects them):
             ceval  DIR/val/{subject}_val.csv + DIR/dev/{subject}_dev.csv;
                    columns id,question,A,B,C,D,answer(,explanation)
             cmmlu  DIR/test/{subject}.csv + DIR/dev/{subject}.csv; columns (index),Question,A,B,C,D,Answer
             mmlu   DIR/test/{subject}_test.csv + DIR/dev/{subject}_dev.csv; no header: question,A,B,C,D,answer
             jsonl  FILE of {"question", "choices": [...], "answer": "B" | 1, "subject"?} (ARC/MMLU style; ARC's
                    {"choices": {"text": [...], "label": [...]}, "answerKey"} also works); shots come from
                    --dev_path, or else the first k records of each subject (then not scored)
           --chat renders questions through the chat template (for SFT models): shots become earlier turns.
  gsm8k    Generative math accuracy on {"question", "answer"} JSONL: greedy decoding through the chat template,
           answer extraction ("#### N", then <answer>...</answer>, then the last number), exact numeric match
           against the number after "####" in the reference.
  lm_eval  Runs EleutherAI's lm-evaluation-harness on a transformers directory exported by
           scripts/convert_model.py torch2hf (remote code, so trust_remote_code=True), e.g.

             python scripts/convert_model.py torch2hf --weight full_sft --hidden_size 512 --dtype float32
             pip install "lm_eval[hf]"          # the hf backend needs accelerate too
             lm_eval --model hf --model_args pretrained=out/full_sft_512-hf,trust_remote_code=True,dtype=float32 \\
                 --tasks ceval-valid,cmmlu --num_fewshot 5 --device cuda:0 --batch_size 16 --output_path out/lm_eval
             # or let this script print / run that command:
             python scripts/eval_benchmark.py lm_eval --hf_dir out/full_sft_512-hf --tasks ceval-valid,cmmlu

           Local tasks need no download: write a task YAML with `dataset_path: json` and
           `dataset_kwargs: {data_files: {test: /path/file.jsonl}}` into a folder, pass --include_path FOLDER and
           set HF_DATASETS_OFFLINE=1 (tests/test_eval_benchmark.py does exactly that).

Models load like eval_llm.py (scripts/model_loading.py): native weights `--weight full_sft --hidden_size 512`
(out/{weight}_{hidden}[_moe].pth), a transformers directory `--load_from DIR`, and LoRA `--lora_weight`.

    python scripts/eval_benchmark.py ppl --data_path dataset/pretrain_hq.jsonl --weight pretrain --limit 2000
    python scripts/eval_benchmark.py ppl --data_path dataset/pretrain_hq.jsonl --weight pretrain \\
        --context_sweep 256,512,1024,2048,4096 --plot images/rope_ppl.png
    python scripts/eval_benchmark.py mc --data_path data/ceval-exam --shots 5 --weight full_sft
    python scripts/eval_benchmark.py mc --data_path dataset/sample/eval_mc.jsonl --weight full_sft --chat
    python scripts/eval_benchmark.py gsm8k --data_path dataset/sample/gsm8k.jsonl --weight full_sft --limit 200

Every subcommand prints a table and, with --output FILE.json, writes its results (scripts/report.py shows them).
"""
import argparse
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dataset.lm_dataset import DataFormatError, JsonlFile, check_pretrain, iter_jsonl  # noqa: E402
from model.errors import USER_ERRORS, UserError, report_user_error  # noqa: E402
from model.scoring import final_number, same_number  # noqa: E402
from scripts.script_utils import pyplot, save_figure, write_json  # noqa: E402

LETTERS = "ABCDEFGHIJ"
_CJK = re.compile(r"[\u4e00-\u9fff]")


class EvalError(UserError):
    """A user mistake (missing file, wrong layout, bad option): one `error:` line, no traceback."""


# ================================================================================================================
# Small helpers
# ================================================================================================================
def model_device(model) -> torch.device:
    return next(model.parameters()).device


def batched(items: Sequence, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> torch.Tensor:
    """Right padding needs no attention mask for a causal model: real tokens never attend to later padding."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def progress(iterable, desc: str, total: Optional[int] = None):
    # disable=None: a bar on a terminal, silence in logs and CI.
    return tqdm(iterable, desc=desc, total=total, unit="batch", dynamic_ncols=True, disable=None)


def print_table(rows: List[dict], title: str = "") -> str:
    import pandas as pd
    text = pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}")
    if title:
        text = f"{title}\n{text}"
    print(text, flush=True)
    return text


# ================================================================================================================
# Perplexity
# ================================================================================================================
def encode_documents(tokenizer, texts: List[str], batch: int = 512) -> List[List[int]]:
    """<|im_start|> text <|im_end|> per document, as PretrainDataset builds training samples (without its
    truncation). Batch calls let the fast (Rust) tokenizer work on many texts at once."""
    out = []
    for chunk in batched(texts, batch):
        for ids in tokenizer(list(chunk), add_special_tokens=False).input_ids:
            out.append([tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id])
    return out


def sliding_windows(n_tokens: int, max_len: int, stride: int) -> List[tuple]:
    """Windows (start, end, score_from) over a sequence of n_tokens tokens.

    Token t (t >= 1) is predicted from tokens < t. The first window is [0, max_len) and scores tokens 1..end-1;
    every later window ends `stride` tokens further, starts max_len tokens before its end, and scores only
    [previous end, end): each token is scored exactly once, with at least max_len - stride tokens of context
    (except near the start of the sequence). A sequence that fits gets one window, identical to no windowing.
    """
    assert max_len >= 2, f"max_seq_len must be >= 2, got {max_len}"
    assert 1 <= stride <= max_len - 1, f"stride must be in [1, max_seq_len - 1], got {stride} (max {max_len})"
    windows, scored_to = [], 1
    while scored_to < n_tokens:
        end = min(n_tokens, max_len) if not windows else min(n_tokens, scored_to + stride)
        start = max(0, end - max_len)
        windows.append((start, end, scored_to))
        scored_to = end
    return windows


@torch.inference_mode()
def window_nll(model, windows: List[List[int]], score_from: List[int]) -> tuple:
    """Sum of next-token NLL over positions >= score_from[i] (relative to each window) and their count."""
    device = model_device(model)
    ids = pad_right(windows).to(device)
    logits = model(input_ids=ids).logits[:, :-1].float()
    targets = ids[:, 1:]
    pos = torch.arange(1, ids.shape[1], device=device)[None, :]
    lens = torch.tensor([len(w) for w in windows], device=device)[:, None]
    starts = torch.tensor(score_from, device=device)[:, None]
    mask = (pos >= starts) & (pos < lens)
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    nll = nll.view_as(targets)
    return float((nll * mask).sum()), int(mask.sum())


def perplexity(model, docs: List[List[int]], max_len: int, stride: Optional[int] = None, batch_size: int = 8,
               desc: str = "ppl") -> dict:
    """Token-weighted perplexity over documents (token id lists, BOS/EOS included)."""
    stride = stride or max(1, max_len // 2)
    jobs = []  # (window tokens, first scored position inside the window)
    for doc in docs:
        for start, end, score_from in sliding_windows(len(doc), max_len, stride):
            jobs.append((doc[start:end], score_from - start))
    if not jobs:
        raise EvalError("no tokens to score (every document is empty?)")
    jobs.sort(key=lambda j: -len(j[0]))  # similar lengths per batch -> little padding
    total_nll, total_n = 0.0, 0
    for batch in progress(list(batched(jobs, batch_size)), desc):
        nll, n = window_nll(model, [j[0] for j in batch], [j[1] for j in batch])
        total_nll += nll
        total_n += n
    mean = total_nll / total_n
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_n, "documents": len(docs), "windows": len(jobs),
            "max_seq_len": max_len, "stride": stride}


def read_texts(path, limit: int = 0, skip_bad_lines: bool = False, offset: int = 0) -> List[str]:
    data = JsonlFile(path, check_pretrain, skip_bad_lines)
    n = len(data)
    start = offset if offset >= 0 else max(0, n + offset)  # negative offset = the last |offset| records
    stop = n if not limit else min(n, start + limit)
    return [str(data[i]["text"]) for i in range(start, stop)]


# ---------------------------------------------------------------- context length sweep (YaRN)
def rope_variant(model, yarn: bool):
    """The same weights with YaRN switched on or off. The cos/sin tables are non-persistent buffers derived from
    the config, so a deep copy with the flag flipped and the tables recomputed is the whole change."""
    import copy
    if not hasattr(model.config, "inference_rope_scaling") or not hasattr(getattr(model, "model", None),
                                                                          "rotary_emb"):
        raise EvalError("--context_sweep needs a MiniMind model (native weights or a torch2hf directory)")
    variant = copy.deepcopy(model)
    variant.config.inference_rope_scaling = yarn
    variant.model.rotary_emb.config = variant.config
    variant.model.rotary_emb.reset_parameters()
    return variant.eval()


def context_sweep(model, stream: List[int], lengths: List[int], max_tokens: Optional[int] = None,
                  batch_size: int = 4) -> dict:
    """PPL of non-overlapping chunks of each length L (all tokens of a chunk scored), with and without YaRN.

    Every L sees the same first `max_tokens` tokens of the stream, cut into max_tokens // L chunks, so the
    curves compare context lengths on the same text.
    """
    lengths = sorted(set(lengths))
    max_tokens = max_tokens or 4 * lengths[-1]
    if len(stream) < max(lengths[-1], max_tokens):
        raise EvalError(f"the text has {len(stream)} tokens; the sweep needs {max(lengths[-1], max_tokens)} "
                        f"(use more documents: --limit 0, or lower --sweep_tokens / the largest length)")
    out = {"lengths": lengths, "tokens_per_length": max_tokens, "ppl": {}}
    for name, yarn in (("no_scaling", False), ("yarn", True)):
        variant = rope_variant(model, yarn)
        ppls = []
        for L in lengths:
            chunks = [stream[i:i + L] for i in range(0, max_tokens - L + 1, L)]
            r = perplexity(variant, chunks, max_len=L, stride=L - 1, batch_size=batch_size,
                           desc=f"{name} L={L}")
            ppls.append(r["ppl"])
        out["ppl"][name] = ppls
        del variant
    return out


def plot_context_sweep(result: dict, path, train_len: Optional[int] = None, title: str = "") -> Path:
    fig, ax = pyplot().subplots(figsize=(6, 3.8), dpi=100)
    labels = {"no_scaling": "RoPE (no scaling)", "yarn": "RoPE + YaRN (inference_rope_scaling)"}
    for name, ppls in result["ppl"].items():
        ax.plot(result["lengths"], ppls, marker="o", label=labels.get(name, name))
    if train_len:
        ax.axvline(train_len, color="gray", linestyle="--", linewidth=1, label=f"training length {train_len}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title or "Perplexity vs context length")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# ================================================================================================================
# Multiple choice
# ================================================================================================================
@dataclass
class MCItem:
    question: str
    choices: List[str]
    answer: int                     # index into choices
    subject: str = ""
    where: str = ""                 # file:line, for messages


@dataclass
class MCSubject:
    name: str
    items: List[MCItem]
    dev: List[MCItem] = field(default_factory=list)
    lang: str = "zh"                # "zh", "en", or "auto" (decided per question: mixed-language JSONL)
    topic: str = ""                 # named in the prompt header ("about {topic}"); "" = no topic


def item_lang(item: MCItem, lang: str) -> str:
    if lang != "auto":
        return lang
    return "zh" if _CJK.search(item.question + "".join(item.choices)) else "en"


def answer_index(ans, n_choices: int, where: str, labels: Optional[List[str]] = None) -> int:
    """'B' / 'b' / 1 / an ARC label -> 0-based index; anything else is a clear error naming the record."""
    idx = None
    if labels is not None and str(ans).strip() in labels:
        idx = labels.index(str(ans).strip())
    elif isinstance(ans, int) and not isinstance(ans, bool):
        idx = ans
    elif isinstance(ans, str) and len(ans.strip()) == 1 and ans.strip().upper() in LETTERS:
        idx = LETTERS.index(ans.strip().upper())
    if idx is None or not 0 <= idx < n_choices:
        raise DataFormatError(f"{where}: answer {ans!r} is not a letter A-{LETTERS[n_choices - 1]} or an index "
                              f"0-{n_choices - 1}")
    return idx


def _column(df, name: str, where: str):
    cols = {str(c).strip().lower(): c for c in df.columns}
    if name.lower() not in cols:
        raise DataFormatError(f"{where}: no '{name}' column (columns: {list(df.columns)})")
    return cols[name.lower()]


def read_mc_csv(path: Path, subject: str, header: bool = True) -> List[MCItem]:
    """C-Eval / CMMLU (header: question, A.., answer; any case) or MMLU (no header) CSV -> items."""
    import pandas as pd
    if not path.is_file():
        raise FileNotFoundError(f"not found: {path}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False, header=0 if header else None)
    items = []
    if header:
        q_col = _column(df, "question", str(path))
        a_col = _column(df, "answer", str(path))
        lowered = {str(c).strip(): c for c in df.columns}
        letters = [l for l in LETTERS if l in lowered]
        if letters != list(LETTERS[:len(letters)]) or len(letters) < 2:
            raise DataFormatError(f"{path}: expected option columns A, B, C, D...; got {list(df.columns)}")
        opt_cols = [lowered[l] for l in letters]
    else:
        if df.shape[1] < 4:
            raise DataFormatError(f"{path}: expected question,A,B,...,answer columns, got {df.shape[1]} columns")
        q_col, a_col, opt_cols = df.columns[0], df.columns[-1], list(df.columns[1:-1])
    for i, row in enumerate(df.itertuples(index=False)):
        row = dict(zip(df.columns, row))
        where = f"{path}:{i + 1 + int(header)}"
        choices = [str(row[c]) for c in opt_cols]
        items.append(MCItem(str(row[q_col]), choices, answer_index(str(row[a_col]), len(choices), where),
                            subject, where))
    return items


def load_csv_benchmark(root: Path, fmt: str, split: Optional[str] = None) -> List[MCSubject]:
    """The official folder layouts of C-Eval, CMMLU and MMLU -> one MCSubject per subject."""
    if fmt == "ceval":
        split = split or "val"
        if split == "test":
            raise EvalError("C-Eval test answers are not public; evaluate --split val (or submit test predictions "
                            "to cevalbenchmark.com)")
        files = sorted((root / split).glob(f"*_{split}.csv"))
        name_of = lambda p: p.name[:-len(f"_{split}.csv")]  # noqa: E731
        dev_of = lambda s: root / "dev" / f"{s}_dev.csv"  # noqa: E731
        header, lang = True, "zh"
    elif fmt == "cmmlu":
        split = split or "test"
        files = sorted((root / split).glob("*.csv"))
        name_of = lambda p: p.stem  # noqa: E731
        dev_of = lambda s: root / "dev" / f"{s}.csv"  # noqa: E731
        header, lang = True, "zh"
    elif fmt == "mmlu":
        split = split or "test"
        files = sorted((root / split).glob(f"*_{split}.csv"))
        name_of = lambda p: p.name[:-len(f"_{split}.csv")]  # noqa: E731
        dev_of = lambda s: root / "dev" / f"{s}_dev.csv"  # noqa: E731
        header, lang = False, "en"
    else:
        raise EvalError(f"unknown CSV benchmark format {fmt!r}")
    if not files:
        raise FileNotFoundError(f"no {fmt} CSV files in {root / split} (expected the official {fmt} layout)")
    subjects = []
    for f in files:
        name = name_of(f)
        dev_path = dev_of(name)
        dev = read_mc_csv(dev_path, name, header) if dev_path.is_file() else []
        subjects.append(MCSubject(name, read_mc_csv(f, name, header), dev, lang, topic=name))
    return subjects


def _jsonl_items(path: Path) -> List[MCItem]:
    if not path.is_file():
        raise FileNotFoundError(f"not found: {path}")
    items = []
    for lineno, rec in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(rec, dict) or not isinstance(rec.get("question"), str):
            raise DataFormatError(f'{where}: expected {{"question": str, "choices": [...], "answer": ...}}')
        choices, labels = rec.get("choices"), None
        if isinstance(choices, dict) and "text" in choices:  # ARC: {"text": [...], "label": ["A", ...]}
            labels = [str(l) for l in choices.get("label", [])] or None
            choices = choices["text"]
        if choices is None and all(l in rec for l in "ABCD"):  # C-Eval-style keys in JSONL
            choices = [rec[l] for l in LETTERS if l in rec]
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
            raise DataFormatError(f"{where}: 'choices' must be a list of 2-{len(LETTERS)} options")
        ans = rec.get("answer", rec.get("answerKey"))
        items.append(MCItem(rec["question"], [str(c) for c in choices],
                            answer_index(ans, len(choices), where, labels), str(rec.get("subject", "")), where))
    if not items:
        raise DataFormatError(f"{path}: no records")
    return items


def load_jsonl_benchmark(path: Path, shots: int, dev_path: Optional[Path] = None) -> List[MCSubject]:
    items = _jsonl_items(path)
    dev_items = _jsonl_items(dev_path) if dev_path else None
    by_subject: Dict[str, List[MCItem]] = {}
    for it in items:
        by_subject.setdefault(it.subject or path.stem, []).append(it)
    subjects = []
    for name, its in by_subject.items():
        if dev_items is not None:
            dev = [d for d in dev_items if (d.subject or path.stem) == name] or dev_items
        else:
            dev, its = its[:shots], its[shots:]  # no dev file: the first k records become the examples
            if not its:
                raise EvalError(f"{path}: subject {name!r} has only {len(dev)} records, all used as --shots")
        topic = its[0].subject  # only a real "subject" field names a topic; the file name does not
        subjects.append(MCSubject(name, its, dev, "auto", topic))
    return subjects


def detect_format(path: Path) -> str:
    if path.is_file():
        return "jsonl"
    if not path.is_dir():
        raise FileNotFoundError(f"--data_path not found: {path}")
    if list((path / "val").glob("*_val.csv")):
        return "ceval"
    if list((path / "test").glob("*_test.csv")):
        return "mmlu"
    if list((path / "test").glob("*.csv")):
        return "cmmlu"
    raise EvalError(f"{path}: not a C-Eval (val/*_val.csv), CMMLU (test/*.csv) or MMLU (test/*_test.csv) folder")


def load_mc(path, fmt: str = "auto", shots: int = 0, dev_path=None, split: Optional[str] = None,
            subjects: Optional[List[str]] = None) -> tuple:
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        subs = load_jsonl_benchmark(path, shots, Path(dev_path) if dev_path else None)
    else:
        subs = load_csv_benchmark(path, fmt, split)
    if subjects:
        known = {s.name for s in subs}
        missing = [s for s in subjects if s not in known]
        if missing:
            raise EvalError(f"unknown subject(s) {missing}; available: {sorted(known)}")
        subs = [s for s in subs if s.name in subjects]
    if shots:
        short = [s.name for s in subs if len(s.dev) < shots]
        if short:
            raise EvalError(f"--shots {shots} but the dev split has fewer examples for: {short[:5]}"
                            + (" ..." if len(short) > 5 else ""))
    return fmt, subs


# ---------------------------------------------------------------- prompts
def answer_prefix(lang: str) -> str:
    return "答案：" if lang == "zh" else "Answer:"


def format_question(item: MCItem, lang: str) -> str:
    opts = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
    return f"{item.question.strip()}\n{opts}"


def format_letter(idx: int, lang: str) -> str:
    # Chinese prompts continue "答案：" directly with the letter; English ones with " A" (as MMLU prompts do).
    return LETTERS[idx] if lang == "zh" else f" {LETTERS[idx]}"


def mc_header(subject: str, lang: str) -> str:
    topic = subject.replace("_", " ") if subject else ""
    if lang == "zh":
        return f"以下是关于{topic}的单项选择题，请选出正确答案。\n\n" if topic else "以下是单项选择题，请选出正确答案。\n\n"
    return (f"The following are multiple choice questions (with answers) about {topic}.\n\n" if topic
            else "The following are multiple choice questions (with answers).\n\n")


def mc_prompt_text(item: MCItem, shots: List[MCItem], lang: str, subject: str = "", chat: bool = False,
                   tokenizer=None) -> str:
    """The text after which the answer letter is scored.

    raw:  header, then per example `question\\nA. ..\\nB. ..\\n答案：C\\n\\n`, then the question and `答案：`.
    chat: one user turn per example (header in the first) answered by an assistant turn holding the letter,
          then the question as the last user turn and the generation prompt: the letter is the reply's start.
    """
    header = mc_header(subject, lang)
    if not chat:
        parts = [header]
        for s in shots:
            parts.append(f"{format_question(s, lang)}\n{answer_prefix(lang)}{format_letter(s.answer, lang)}\n\n")
        parts.append(f"{format_question(item, lang)}\n{answer_prefix(lang)}")
        return "".join(parts)
    messages = []
    for s in shots + [item]:
        content = (header if not messages else "") + f"{format_question(s, lang)}\n{answer_prefix(lang)}"
        messages.append({"role": "user", "content": content})
        if s is not item:
            messages.append({"role": "assistant", "content": LETTERS[s.answer]})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def mc_prompt_ids(tokenizer, item: MCItem, shots: List[MCItem], lang: str, subject: str, chat: bool,
                  max_len: int, add_bos: bool = True) -> tuple:
    """Token ids of the prompt, dropping examples until it fits in max_len (then cutting from the left)."""
    k = len(shots)
    while True:
        text = mc_prompt_text(item, shots[:k], lang, subject, chat, tokenizer)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if add_bos and not chat:  # raw prompts start like pretraining documents; the chat template has its own
            ids = [tokenizer.bos_token_id] + ids
        if len(ids) <= max_len or k == 0:
            return ids[-max_len:], k
        k -= 1


def letter_token_ids(tokenizer, n: int = len(LETTERS)) -> List[List[int]]:
    """For each letter the single-token spellings of it ("A" and " A"); their probabilities are summed."""
    out = []
    for letter in LETTERS[:n]:
        variants = []
        for s in (letter, f" {letter}"):
            ids = tokenizer(s, add_special_tokens=False).input_ids
            if len(ids) == 1 and ids[0] not in variants:
                variants.append(ids[0])
        if not variants:
            raise EvalError(f"the tokenizer has no single token for the answer letter {letter!r}")
        out.append(variants)
    return out


@torch.inference_mode()
def next_token_logprobs(model, prompts: List[List[int]]) -> torch.Tensor:
    """log p(next token | prompt) for each prompt: (B, vocab), read at each row's last real position."""
    device = model_device(model)
    ids = pad_right(prompts).to(device)
    last = torch.tensor([len(p) - 1 for p in prompts], device=device)
    logits = model(input_ids=ids).logits
    return F.log_softmax(logits[torch.arange(len(prompts), device=device), last].float(), dim=-1)


def score_letters(logprobs: torch.Tensor, letter_ids: List[List[int]], n_choices: int) -> List[float]:
    """log p(letter) = logsumexp over its spellings, for the first n_choices letters of one row (1-D logprobs)."""
    return [float(torch.logsumexp(logprobs[letter_ids[i]], 0)) for i in range(n_choices)]


def evaluate_mc(model, tokenizer, subjects: List[MCSubject], shots: int = 0, chat: bool = False,
                max_len: int = 2048, batch_size: int = 8, lang: str = "auto") -> dict:
    letter_ids = letter_token_ids(tokenizer)
    jobs = []
    for sub in subjects:
        for it in sub.items:
            it_lang = item_lang(it, sub.lang if lang == "auto" else lang)
            ids, used = mc_prompt_ids(tokenizer, it, sub.dev[:shots], it_lang, sub.topic, chat, max_len)
            jobs.append((sub.name, it, ids, used))
    order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j][2]))
    preds: List[Optional[dict]] = [None] * len(jobs)
    for batch in progress(list(batched(order, batch_size)), "mc"):
        lp = next_token_logprobs(model, [jobs[j][2] for j in batch])
        for row, j in enumerate(batch):
            name, it, ids, used = jobs[j]
            scores = score_letters(lp[row], letter_ids, len(it.choices))
            pred = max(range(len(scores)), key=scores.__getitem__)
            preds[j] = {"subject": name, "where": it.where, "answer": LETTERS[it.answer], "pred": LETTERS[pred],
                        "correct": pred == it.answer, "scores": [round(s, 4) for s in scores], "shots": used,
                        "prompt_tokens": len(ids)}
    per_subject = []
    for sub in subjects:
        rows = [p for p in preds if p["subject"] == sub.name]
        chance = sum(1 / len(it.choices) for it in sub.items) / len(sub.items)
        per_subject.append({"subject": sub.name, "n": len(rows), "correct": sum(p["correct"] for p in rows),
                            "acc": sum(p["correct"] for p in rows) / len(rows), "chance": chance})
    n = sum(s["n"] for s in per_subject)
    correct = sum(s["correct"] for s in per_subject)
    overall = {"n": n, "correct": correct, "acc": correct / n,
               "macro_acc": sum(s["acc"] for s in per_subject) / len(per_subject),
               "chance": sum(s["chance"] * s["n"] for s in per_subject) / n,
               "truncated_shots": sum(p["shots"] < shots for p in preds),
               # A model at chance level often just prefers one letter: show which.
               "pred_counts": {l: sum(p["pred"] == l for p in preds) for l in LETTERS
                               if any(p["pred"] == l or p["answer"] == l for p in preds)}}
    return {"overall": overall, "subjects": per_subject, "predictions": preds}


# ================================================================================================================
# GSM8K
# ================================================================================================================
# Answers are read and compared by model/scoring.py, the rules the RL reward uses too (trainer/rl_utils.py
# gsm8k_reward): a reply counted correct here is one the reward pays for. Under their names in this script:
#   extract_answer(text)  '#### N', else the last number inside <answer>..</answer>, else the last number; None
#   numbers_match(p, r)   p equals the reference r (model/scoring.py same_number's tolerance); False for None
extract_answer = final_number
numbers_match = same_number


def check_gsm8k(rec):
    if not isinstance(rec.get("question"), str):
        return 'expected {"question": str, "answer": str}'
    if not isinstance(rec.get("answer"), (str, int, float)) or isinstance(rec.get("answer"), bool):
        return '"answer" must be the reference solution text ("... #### 42") or a number'
    return None


def gsm8k_prompts(tokenizer, questions: List[str], suffix: str = "", system: str = "",
                  enable_thinking: Optional[bool] = None) -> List[List[int]]:
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    out = []
    for q in questions:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": q + suffix}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        out.append(tokenizer(text, add_special_tokens=False).input_ids)
    return out


def default_generate_fn(model, tokenizer, max_new_tokens: int, max_total_len: Optional[int] = None) -> Callable:
    """Greedy decoding of a batch of prompt ids -> response texts (our batched decoder for MiniMind models,
    transformers' generate() for anything else, e.g. a Llama export)."""
    from model.generation import generate, is_minimind

    def run(prompts: List[List[int]]) -> List[str]:
        if is_minimind(model):
            out = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=0, max_total_len=max_total_len,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            rows = [r[m.bool()].tolist() for r, m in zip(out.responses.cpu(), out.response_mask.cpu())]
        else:
            from model.generation import left_pad
            ids, mask = left_pad(prompts, tokenizer.pad_token_id, model_device(model))
            seq = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            rows = []
            for r in seq[:, ids.shape[1]:].tolist():
                rows.append(r[:r.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in r else r)
        return [tokenizer.decode(r, skip_special_tokens=True) for r in rows]
    return run


def evaluate_gsm8k(records: List[dict], tokenizer, generate_fn: Callable, batch_size: int = 8, suffix: str = "",
                   system: str = "", enable_thinking: Optional[bool] = None) -> dict:
    samples = []
    for batch in progress(list(batched(records, batch_size)), "gsm8k"):
        prompts = gsm8k_prompts(tokenizer, [r["question"] for r in batch], suffix, system, enable_thinking)
        for rec, response in zip(batch, generate_fn(prompts)):
            ref = extract_answer(str(rec["answer"]))
            pred = extract_answer(response)
            samples.append({"question": rec["question"], "reference": ref, "pred": pred,
                            "correct": numbers_match(pred, ref), "response": response})
    n = len(samples)
    correct = sum(s["correct"] for s in samples)
    return {"overall": {"n": n, "correct": correct, "acc": correct / n if n else 0.0,
                        "no_number": sum(s["pred"] is None for s in samples)}, "samples": samples}


# ================================================================================================================
# lm-evaluation-harness
# ================================================================================================================
def lm_eval_command(hf_dir, tasks: str, device: str = "cpu", batch_size: int = 8, num_fewshot: Optional[int] = None,
                    limit: Optional[float] = None, include_path: Optional[str] = None,
                    output_path: Optional[str] = None, dtype: str = "float32", chat: bool = False,
                    extra: str = "") -> List[str]:
    exe = shutil.which("lm_eval") or shutil.which("lm-eval")
    cmd = [exe] if exe else [sys.executable, "-m", "lm_eval"]
    cmd += ["--model", "hf", "--model_args", f"pretrained={hf_dir},trust_remote_code=True,dtype={dtype}",
            "--tasks", tasks, "--device", device, "--batch_size", str(batch_size)]
    if num_fewshot is not None:
        cmd += ["--num_fewshot", str(num_fewshot)]
    if limit:
        cmd += ["--limit", str(limit)]
    if include_path:
        cmd += ["--include_path", str(include_path)]
    if output_path:
        cmd += ["--output_path", str(output_path)]
    if chat:
        cmd += ["--apply_chat_template"]
    return cmd + shlex.split(extra)


# ================================================================================================================
# Command line
# ================================================================================================================
def _model_loading():
    """scripts/model_loading.py (shared with eval_llm.py), imported only when a model is needed."""
    try:
        from scripts import model_loading
    except ImportError as e:
        raise EvalError(f"cannot import scripts/model_loading.py ({e})") from None
    return model_loading


def add_model_flags(p: argparse.ArgumentParser):
    _model_loading().add_model_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="MiniMind benchmarks", epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, batch_size=8, max_seq_len=2048):
        add_model_flags(p)
        p.add_argument("--data_path", type=str, required=True)
        p.add_argument("--batch_size", type=int, default=batch_size)
        p.add_argument("--max_seq_len", type=int, default=max_seq_len, help="context length of one forward pass")
        p.add_argument("--limit", type=int, default=0,
                       help="evaluate only the first N records (mc: per subject; 0 = all)")
        p.add_argument("--output", type=str, default=None, help="write results as JSON here")

    p = sub.add_parser("ppl", help="perplexity of {text} JSONL; --context_sweep for the YaRN curve")
    common(p, batch_size=8, max_seq_len=512)
    p.add_argument("--stride", type=int, default=0, help="sliding-window step (default max_seq_len // 2)")
    p.add_argument("--offset", type=int, default=0,
                   help="first record to use; negative = the last |offset| records (a held-out tail)")
    p.add_argument("--skip_bad_lines", action="store_true")
    p.add_argument("--context_sweep", type=str, default="",
                   help="comma-separated context lengths: PPL vs length with and without YaRN")
    p.add_argument("--sweep_tokens", type=int, default=0, help="tokens scored per length (default 4 x max length)")
    p.add_argument("--train_seq_len", type=int, default=0, help="marks the training length on the plot")
    p.add_argument("--plot", type=str, default=str(ROOT / "images" / "rope_ppl.png"))

    p = sub.add_parser("mc", help="multiple choice: C-Eval / CMMLU / MMLU folders or JSONL")
    common(p, batch_size=8, max_seq_len=2048)
    p.add_argument("--format", type=str, default="auto", choices=["auto", "ceval", "cmmlu", "mmlu", "jsonl"])
    p.add_argument("--split", type=str, default=None, help="default: val (C-Eval), test (CMMLU, MMLU)")
    p.add_argument("--subjects", type=str, default="", help="comma-separated subset of subjects")
    p.add_argument("--shots", type=int, default=0, help="k-shot examples from the dev split")
    p.add_argument("--dev_path", type=str, default=None, help="JSONL of examples for --shots (jsonl format)")
    p.add_argument("--lang", type=str, default="auto", choices=["auto", "zh", "en"],
                   help="prompt language: 答案： or Answer: (auto: zh for C-Eval/CMMLU, by content for JSONL)")
    p.add_argument("--chat", action="store_true", help="render through the chat template (SFT models)")

    p = sub.add_parser("gsm8k", help="greedy generation + numeric exact match on {question, answer} JSONL")
    common(p, batch_size=8, max_seq_len=2048)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--prompt_suffix", type=str, default="", help="appended to each question")
    p.add_argument("--system", type=str, default="", help="optional system message")
    p.add_argument("--enable_thinking", type=int, default=None, choices=[0, 1],
                   help="passed to the chat template (reasoning models)")

    p = sub.add_parser("lm_eval", help="run lm-evaluation-harness on a torch2hf directory")
    p.add_argument("--hf_dir", type=str, required=True, help="from scripts/convert_model.py torch2hf")
    p.add_argument("--tasks", type=str, required=True, help="e.g. ceval-valid,cmmlu,arc_easy")
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_fewshot", type=int, default=None)
    p.add_argument("--limit", type=float, default=None)
    p.add_argument("--include_path", type=str, default=None, help="folder of extra task YAMLs")
    p.add_argument("--output_path", type=str, default=None)
    p.add_argument("--dtype", type=str, default="float32")
    p.add_argument("--chat", action="store_true", help="--apply_chat_template")
    p.add_argument("--extra", type=str, default="", help="more lm_eval flags, as one string")
    p.add_argument("--print_only", action="store_true", help="print the command instead of running it")
    return parser


def run_ppl(args, model, tokenizer, name) -> dict:
    if args.context_sweep:
        lengths = [int(x) for x in args.context_sweep.split(",") if x.strip()]
        need = args.sweep_tokens or 4 * max(lengths)
        texts = read_texts(args.data_path, args.limit, args.skip_bad_lines, args.offset)
        stream: List[int] = []
        for chunk in batched(texts, 256):  # tokenize only as much text as the sweep needs
            for doc in encode_documents(tokenizer, list(chunk)):
                stream.extend(doc)
            if len(stream) >= need:
                break
        result = context_sweep(model, stream, lengths, args.sweep_tokens or None, args.batch_size)
        rows = [{"context": L, "ppl_no_scaling": a, "ppl_yarn": b}
                for L, a, b in zip(result["lengths"], result["ppl"]["no_scaling"], result["ppl"]["yarn"])]
        print_table(rows, f"[{name}] perplexity vs context length ({result['tokens_per_length']} tokens each)")
        plot = plot_context_sweep(result, args.plot, args.train_seq_len or None, f"{name}: PPL vs context length")
        print(f"plot -> {plot}")
        return {"task": "context_sweep", "model": name, "data": str(args.data_path), **result, "plot": str(plot)}
    texts = read_texts(args.data_path, args.limit, args.skip_bad_lines, args.offset)
    docs = encode_documents(tokenizer, texts)
    result = perplexity(model, docs, args.max_seq_len, args.stride or None, args.batch_size)
    print_table([{"model": name, **{k: result[k] for k in ("ppl", "nll", "tokens", "documents", "windows")}}],
                f"[{name}] perplexity on {args.data_path}")
    return {"task": "ppl", "model": name, "data": str(args.data_path), **result}


def run_mc(args, model, tokenizer, name) -> dict:
    subjects = [s for s in args.subjects.split(",") if s.strip()] or None
    fmt, subs = load_mc(args.data_path, args.format, args.shots, args.dev_path, args.split, subjects)
    if args.limit:
        for s in subs:
            s.items = s.items[:args.limit]
    result = evaluate_mc(model, tokenizer, subs, args.shots, args.chat, args.max_seq_len, args.batch_size, args.lang)
    rows = [dict(s) for s in result["subjects"]]
    o = result["overall"]
    rows.append({"subject": "OVERALL", "n": o["n"], "correct": o["correct"], "acc": o["acc"], "chance": o["chance"]})
    print_table(rows, f"[{name}] {fmt} {args.shots}-shot{' chat' if args.chat else ''}: accuracy vs chance")
    if len(result["subjects"]) > 1:
        print(f"macro average over {len(result['subjects'])} subjects: {o['macro_acc']:.4f}")
    print("predicted letters: " + ", ".join(f"{k} {v}" for k, v in o["pred_counts"].items()))
    if o["truncated_shots"]:
        print(f"note: {o['truncated_shots']} prompts dropped examples to fit --max_seq_len {args.max_seq_len}")
    return {"task": "mc", "format": fmt, "model": name, "data": str(args.data_path), "shots": args.shots,
            "chat": args.chat, **result}


def run_gsm8k(args, model, tokenizer, name) -> dict:
    data = JsonlFile(args.data_path, check_gsm8k)
    n = len(data) if not args.limit else min(args.limit, len(data))
    records = [data[i] for i in range(n)]
    think = None if args.enable_thinking is None else bool(args.enable_thinking)
    gen = default_generate_fn(model, tokenizer, args.max_new_tokens, args.max_seq_len)
    result = evaluate_gsm8k(records, tokenizer, gen,
                            args.batch_size, args.prompt_suffix, args.system, think)
    o = result["overall"]
    print_table([{"model": name, **o}], f"[{name}] gsm8k greedy exact match on {args.data_path}")
    return {"task": "gsm8k", "model": name, "data": str(args.data_path), **result}


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        if args.command == "lm_eval":
            cmd = lm_eval_command(args.hf_dir, args.tasks, args.device, args.batch_size, args.num_fewshot,
                                  args.limit, args.include_path, args.output_path, args.dtype, args.chat, args.extra)
            print(" ".join(shlex.quote(c) for c in cmd), flush=True)
            if args.print_only:
                return 0
            if not Path(args.hf_dir, "config.json").is_file():
                raise EvalError(f"{args.hf_dir} is not a transformers directory; export one with "
                                f"`python scripts/convert_model.py torch2hf ...`")
            try:
                import accelerate  # noqa: F401  (lm_eval's hf backend imports it)
                import lm_eval  # noqa: F401
            except ImportError:
                raise EvalError("lm_eval with its hf backend is not installed: `pip install \"lm_eval[hf]\"`, then "
                                "run the command above") from None
            return subprocess.call(cmd)
        model, tokenizer, name = _model_loading().load_model(args)
        model.eval()
        result = {"ppl": run_ppl, "mc": run_mc, "gsm8k": run_gsm8k}[args.command](args, model, tokenizer, name)
        if args.output:
            write_json(result, args.output)
            print(f"results -> {args.output}")
        return 0
    except USER_ERRORS as e:  # a missing or malformed file, weights that do not fit: one `error:` line, exit 2
        return report_user_error(e)


if __name__ == "__main__":
    sys.exit(main())
