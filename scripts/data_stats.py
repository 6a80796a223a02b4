"""Statistics of a MiniMind data file: what --max_seq_len to train with, and what padding costs.

For a pretrain / sft / dpo / rlaif JSONL file (detected from the records, or --kind):

  records      valid records; bad lines are counted and the first few reported as file:line: reason
               (the same validators the datasets use, so a file that passes here loads in training)
  tokens       the token length of every training sequence exactly as the dataset classes build it:
               pretrain = <|im_start|> text <|im_end|>; sft = the chat template rendering (SFTDataset.render);
               dpo = chosen and rejected renderings; rlaif = the prompt with the generation prompt
               (the response is generated during RL). Percentiles, characters per token, a PNG histogram.
  max_seq_len  the length that truncates only --truncation of the sequences (0.05 -> the 95th percentile),
               rounded up to a multiple of --multiple (64, or 16). For comparison: the original MiniMind trains
               full SFT on sft_mini_512.jsonl with max_seq_len 340 even though its records are up to 512
               characters, because most are far shorter.
  padding      the fraction of the compute spent on padding when every sample is padded to max_seq_len (the
               original's behaviour, --pad_to_max): 1 - mean(min(len, L)) / L, versus dynamic padding (our
               PadCollator) in random batches of --batch_size, simulated by shuffling the real lengths.

    python scripts/data_stats.py dataset/sft_mini_512.jsonl --sample 20000 --plot out/sft_lengths.png
    python scripts/data_stats.py dataset/pretrain_hq.jsonl --truncation 0.01 --multiple 16 --json out/stats.json

Tokenization runs in batches through the fast (Rust) tokenizer; --sample N estimates from N random records
(reservoir sampling, so the file is read once and never held in memory).
"""
import argparse
import json
import math
import random
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from dataset.lm_dataset import _ChatDataset, check_dpo, check_pretrain, check_rlaif, check_sft  # noqa: E402
from model.errors import USER_ERRORS, UserError, report_user_error  # noqa: E402
from scripts.script_utils import pyplot, save_figure, write_json  # noqa: E402

CHECKS = {"pretrain": check_pretrain, "sft": check_sft, "dpo": check_dpo, "rlaif": check_rlaif}
PERCENTILES = (50, 75, 90, 95, 99)
RLAIF_PLACEHOLDER = "无"  # upstream rlaif-mini.jsonl's assistant content: the response is generated in RL


class StatsError(UserError):
    """A user mistake (missing file, unknown format): one `error:` line."""


# ================================================================================================================
# Reading
# ================================================================================================================
def detect_kind(records: List[dict]) -> Optional[str]:
    """Data kind from the first records' keys; RLAIF = single-turn conversations answered by the placeholder."""
    recs = [r for r in records if isinstance(r, dict)]
    if not recs:
        return None
    r = recs[0]
    if "text" in r:
        return "pretrain"
    if "chosen" in r and "rejected" in r:
        return "dpo"
    if "question" in r:
        return "rlaif"
    if "conversations" in r:
        def placeholder(rec):
            conv = rec.get("conversations")
            return (isinstance(conv, list) and len(conv) == 2 and isinstance(conv[-1], dict)
                    and str(conv[-1].get("content", "")).strip() == RLAIF_PLACEHOLDER)
        convs = [x for x in recs if "conversations" in x]
        return "rlaif" if all(placeholder(x) for x in convs) else "sft"
    return None


def read_records(path, kind: str = "auto", sample: int = 0, seed: int = 0, max_errors: int = 5) -> dict:
    """Validate every line; keep all valid records, or a uniform random sample of `sample` of them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    rng = random.Random(seed)
    kept, n_valid, n_bad, errors, n_lines = [], 0, 0, [], 0
    pending = []  # (lineno, record) seen before the kind is known (auto-detection looks at the first 50)
    check = CHECKS.get(kind)
    if kind != "auto" and check is None:
        raise StatsError(f"unknown --kind {kind!r}; choose from {sorted(CHECKS)} or auto")

    def accept(lineno, rec):
        nonlocal n_valid, n_bad
        reason = check(rec)
        if reason:
            n_bad += 1
            if len(errors) < max_errors:
                errors.append(f"{path}:{lineno}: {reason}")
            return
        n_valid += 1
        if not sample or len(kept) < sample:
            kept.append(rec)
        else:  # reservoir sampling (Algorithm R): every record ends up kept with probability sample / n_valid
            j = rng.randrange(n_valid)
            if j < sample:
                kept[j] = rec

    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            n_lines = lineno
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise ValueError("a record must be a JSON object")
            except (ValueError, UnicodeDecodeError) as e:
                n_bad += 1
                if len(errors) < max_errors:
                    errors.append(f"{path}:{lineno}: invalid JSON ({e})")
                continue
            if check is None:
                pending.append((lineno, rec))
                if len(pending) < 50:
                    continue
                kind = detect_kind([r for _, r in pending])
                if kind is None:
                    raise StatsError(f"{path}: cannot tell the data kind from keys {sorted(pending[0][1])}; "
                                     f"pass --kind pretrain|sft|dpo|rlaif")
                check = CHECKS[kind]
                for ln, r in pending:
                    accept(ln, r)
                pending = []
                continue
            accept(lineno, rec)
    if check is None:  # short file: fewer than 50 records
        kind = detect_kind([r for _, r in pending])
        if kind is None:
            raise StatsError(f"{path}: no records of a known kind; pass --kind pretrain|sft|dpo|rlaif")
        check = CHECKS[kind]
        for ln, r in pending:
            accept(ln, r)
    if n_valid == 0:
        raise StatsError(f"{path}: no valid {kind} records ({n_bad} bad lines; first: {errors[:1]})")
    return {"path": str(path), "kind": kind, "records": n_valid, "bad_lines": n_bad, "errors": errors,
            "lines": n_lines, "sample": kept}


# ================================================================================================================
# Token lengths
# ================================================================================================================
def training_texts(records: List[dict], kind: str, tokenizer, enable_thinking: Optional[bool] = None) -> tuple:
    """The strings the dataset classes tokenize, one per training row, and the special tokens added around each
    (pretrain gets BOS + EOS outside the text). DPO records give two rows (chosen, rejected)."""
    # The chat datasets' own render(), called on a stand-in object: no file scan needed, same template calls.
    shim = SimpleNamespace(tokenizer=tokenizer, enable_thinking=enable_thinking)

    def render(turns, tools=None, gen=False):
        return _ChatDataset.render(shim, turns, tools, add_generation_prompt=gen)

    texts, extra = [], 0
    if kind == "pretrain":
        texts, extra = [str(r["text"]) for r in records], 2
    elif kind == "sft":
        texts = [render(r["conversations"], r.get("tools")) for r in records]
    elif kind == "dpo":
        for r in records:
            texts += [render(r["chosen"], r.get("tools")), render(r["rejected"], r.get("tools"))]
    elif kind == "rlaif":
        for r in records:
            if "question" in r:
                turns = [{"role": "user", "content": r["question"]}]
            else:
                turns = r["conversations"][:-1] if r["conversations"][-1]["role"] == "assistant" \
                    else r["conversations"]
            texts.append(render(turns, r.get("tools"), gen=True))
    else:
        raise StatsError(f"unknown kind {kind!r}")
    return texts, extra


def token_lengths(texts: List[str], tokenizer, extra: int = 0, batch: int = 1000) -> np.ndarray:
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], add_special_tokens=False, return_attention_mask=False)
        out += [len(ids) + extra for ids in enc["input_ids"]]
    return np.asarray(out, dtype=np.int64)


def percentiles(lengths: np.ndarray) -> dict:
    return {f"p{p}": int(np.percentile(lengths, p, method="higher")) for p in PERCENTILES}


def recommend_max_seq_len(lengths: np.ndarray, truncation: float = 0.05, multiple: int = 64) -> int:
    """Smallest multiple of `multiple` that truncates at most a `truncation` fraction of the sequences."""
    assert 0 <= truncation < 1, f"--truncation must be in [0, 1), got {truncation}"
    q = float(np.quantile(lengths, 1 - truncation, method="higher"))
    return max(multiple, int(math.ceil(q / multiple) * multiple))


def truncated_fraction(lengths: np.ndarray, max_len: int) -> float:
    return float((lengths > max_len).mean())


def padding_waste(lengths: np.ndarray, max_len: int, batch_size: int = 32, rows_per_record: int = 1,
                  seed: int = 0, trials: int = 3) -> dict:
    """Fraction of the positions in a batch that are padding.

    pad_to_max: every row padded (or cut) to max_len -> 1 - mean(min(len, L)) / L.
    dynamic:    rows padded to the longest row of their batch; batches of `batch_size` records in a random
                order (the trainer shuffles), averaged over a few shuffles. DPO keeps a record's chosen and
                rejected rows in the same batch, as PadCollator does.
    grouped:    dynamic padding with batches of similar lengths (sorted, then chunked): the lower bound that
                length-grouped sampling could reach. With random batches the longest of B samples sits near the
                top of the length distribution, so `dynamic` is often close to `pad_to_max`.
    """
    clipped = np.minimum(lengths, max_len).reshape(-1, rows_per_record)
    fixed = 1.0 - clipped.mean() / max_len
    rng = np.random.default_rng(seed)
    real = padded = 0
    for _ in range(trials):
        order = rng.permutation(len(clipped))
        for i in range(0, len(order), batch_size):
            b = clipped[order[i:i + batch_size]]
            real += int(b.sum())
            padded += int(b.size * b.max())
    order = np.argsort(clipped.max(axis=1), kind="stable")
    g_real = g_padded = 0
    for i in range(0, len(order), batch_size):
        b = clipped[order[i:i + batch_size]]
        g_real += int(b.sum())
        g_padded += int(b.size * b.max())
    return {"pad_to_max": float(fixed), "dynamic": 1.0 - real / padded, "grouped": 1.0 - g_real / g_padded,
            "batch_size": batch_size}


def describe_file(path, tokenizer, kind: str = "auto", sample: int = 0, seed: int = 0, truncation: float = 0.05,
                  multiple: int = 64, batch_size: int = 32, max_len: Optional[int] = None,
                  enable_thinking: Optional[bool] = None) -> dict:
    """Everything this script reports, as a dict (also used by scripts/report.py)."""
    data = read_records(path, kind, sample, seed)
    records = data.pop("sample")
    texts, extra = training_texts(records, data["kind"], tokenizer, enable_thinking)
    lengths = token_lengths(texts, tokenizer, extra)
    rows_per_record = 2 if data["kind"] == "dpo" else 1
    rec_len = recommend_max_seq_len(lengths, truncation, multiple)
    L = max_len or rec_len
    sampled = len(records) < data["records"]
    scale = data["records"] / len(records)
    stats = dict(data, sampled=len(records) if sampled else None, rows=int(len(lengths) * scale),
                 tokens=int(round(lengths.sum() * scale)), mean=float(lengths.mean()), min=int(lengths.min()),
                 max=int(lengths.max()), percentiles=percentiles(lengths),
                 chars_per_token=sum(len(t) for t in texts) / max(1, int(lengths.sum()) - extra * len(texts)),
                 truncation=truncation, multiple=multiple, recommended_max_seq_len=rec_len, max_seq_len=L,
                 truncated_at_max_seq_len=truncated_fraction(lengths, L),
                 padding=padding_waste(lengths, L, batch_size, rows_per_record, seed))
    stats["_lengths"] = lengths  # for the histogram; dropped before JSON output
    return stats


# ================================================================================================================
# Output
# ================================================================================================================
def plot_histogram(stats: dict, path, dpi: int = 80) -> Path:
    lengths = stats["_lengths"]
    fig, ax = pyplot().subplots(figsize=(6, 3.5), dpi=dpi)
    ax.hist(lengths, bins=min(80, max(10, int(np.sqrt(len(lengths))))), color="C0", alpha=0.8)
    p = stats["percentiles"]
    ax.axvline(p["p50"], color="C2", linestyle=":", label=f"median {p['p50']}")
    ax.axvline(p["p95"], color="C1", linestyle="--", label=f"p95 {p['p95']}")
    ax.axvline(stats["max_seq_len"], color="C3", label=f"max_seq_len {stats['max_seq_len']} "
                                                       f"({stats['truncated_at_max_seq_len']:.1%} truncated)")
    ax.set_xlabel("tokens per training sequence")
    ax.set_ylabel("sequences")
    name = Path(stats["path"]).name
    ax.set_title(f"{name} ({stats['kind']}, {len(lengths):,} sequences"
                 f"{', sampled' if stats.get('sampled') else ''})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def format_report(s: dict) -> str:
    p = s["percentiles"]
    est = f" (estimated from a sample of {s['sampled']:,})" if s.get("sampled") else ""
    lines = [f"{s['path']}: {s['kind']}, {s['records']:,} records, {s['bad_lines']} bad line(s)"]
    lines += [f"  {e}" for e in s["errors"]]
    lines += [
        f"tokens{est}: {s['tokens']:,} total over {s['rows']:,} sequences; mean {s['mean']:.1f}, min {s['min']}, "
        f"max {s['max']}; " + ", ".join(f"{k} {v}" for k, v in p.items()),
        f"characters per token: {s['chars_per_token']:.2f}",
        f"recommended --max_seq_len {s['recommended_max_seq_len']} (truncates <= {s['truncation']:.0%}: "
        f"the {100 - s['truncation'] * 100:g}th percentile rounded up to a multiple of {s['multiple']})",
        f"at max_seq_len {s['max_seq_len']}: {s['truncated_at_max_seq_len']:.2%} of sequences truncated; "
        f"padding wastes {s['padding']['pad_to_max']:.1%} of the compute when every sample is padded to "
        f"max_seq_len (--pad_to_max), {s['padding']['dynamic']:.1%} with dynamic padding in random batches of "
        f"{s['padding']['batch_size']} (PadCollator), {s['padding']['grouped']:.1%} in length-grouped batches",
    ]
    if "sft_mini_512" in Path(s["path"]).name:
        lines.append("note: the original MiniMind trains full SFT on sft_mini_512 with max_seq_len 340")
    return "\n".join(lines)


def load_tokenizer(path):
    """The tokenizer alone (not trainer_utils.load_tokenizer, whose module pulls in the model code)."""
    from transformers import AutoTokenizer
    if not (Path(path) / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}")
    return AutoTokenizer.from_pretrained(str(path))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MiniMind data statistics", epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_path", type=str)
    p.add_argument("--kind", type=str, default="auto", choices=["auto", *CHECKS])
    p.add_argument("--sample", type=int, default=0, help="estimate from N random records (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncation", type=float, default=0.05, help="accepted fraction of truncated sequences")
    p.add_argument("--multiple", type=int, default=64, help="round max_seq_len up to a multiple of this")
    p.add_argument("--max_seq_len", type=int, default=0, help="evaluate truncation/padding at this length "
                                                              "instead of the recommended one")
    p.add_argument("--batch_size", type=int, default=32, help="batch size of the dynamic-padding simulation")
    p.add_argument("--enable_thinking", type=int, default=None, choices=[0, 1], help="passed to the chat template")
    p.add_argument("--tokenizer_path", type=str, default=str(ROOT / "model"))
    p.add_argument("--plot", type=str, default=None, help="write the token-length histogram PNG here")
    p.add_argument("--json", type=str, default=None, help="write the statistics as JSON here")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tok = load_tokenizer(args.tokenizer_path)
        think = None if args.enable_thinking is None else bool(args.enable_thinking)
        stats = describe_file(args.data_path, tok, args.kind, args.sample, args.seed, args.truncation, args.multiple,
                              args.batch_size, args.max_seq_len or None, think)
        print(format_report(stats), flush=True)
        if args.plot:
            print(f"histogram -> {plot_histogram(stats, args.plot)}")
        if args.json:
            path = write_json({k: v for k, v in stats.items() if not k.startswith("_")}, args.json)
            print(f"statistics -> {path}")
        return 0
    except USER_ERRORS as e:  # one `error:` line, exit status 2
        return report_user_error(e)


if __name__ == "__main__":
    sys.exit(main())
