"""Chat with a trained MiniMind in the terminal (or run a prompt file through it).

Modes
    --mode auto            a built-in list of test prompts (Chinese and English); the default
    --mode interactive     read prompts from stdin until EOF or `exit`
    --prompts_file FILE    batch: .txt = one prompt per line; .jsonl = {"prompt": ...} or {"conversations": [...],
                           "tools"?} per line (a trailing assistant turn is dropped: it is the reference answer).
                           Each prompt stands alone: no history is carried between lines.
    --output FILE          also write the answers as JSONL: {"prompt", "answer", "tokens", "tokens_per_s",
                           "prompt_tokens"} (+ "reasoning" for reasoning models)

Tokens are printed as they are generated. A reasoning model's <think>...</think> part is shown dimmed (or
between [think] markers when stdout is not a terminal) and can be hidden with --show_thinking 0 (display
only). Whether the model thinks at all is --enable_thinking 1|0 (alias --open_thinking): passed to the chat
template under the switch it reads (ours: enable_thinking; upstream minimind-3's: open_thinking, where 1 opens
a <think> block for the model); unset is the template's default. Pretrain weights continue raw text (no chat
template), as in the original MiniMind.

    python eval_llm.py --weight full_sft
    python eval_llm.py --weight reason --mode interactive --historys 4
    python eval_llm.py --load_from ./minimind-3 --enable_thinking 1   # adaptive thinking: switch it on
    python eval_llm.py --load_from ./MiniMind2 --prompts_file prompts.txt --output answers.jsonl
    python eval_llm.py --weight full_sft --lora_weight lora_identity
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # run from any directory

import torch  # noqa: E402

from dataset.lm_dataset import DataFormatError, iter_jsonl  # noqa: E402
from model.atomic_io import atomic_write_text  # noqa: E402
from model.chat_template import add_thinking_arg, thinking_arg  # noqa: E402
from model.errors import exit_on_user_error  # noqa: E402
from model.generation import stream_tokens  # noqa: E402
from model.reply_stream import ReplyStream  # noqa: E402
from model.runtime import setup_seed  # noqa: E402
from scripts.model_loading import add_model_args, chat_prompt, load_model  # noqa: E402

CHAT_PROMPTS = [
    "你有什么特长？",
    "为什么天空是蓝色的？",
    "请用Python写一个计算斐波那契数列的函数。",
    "解释一下“光合作用”的基本过程。",
    "推荐几本适合初学者的机器学习书籍。",
    "如果明天下雨，我应该如何出门？",
    "比较一下猫和狗作为宠物的优缺点。",
    "Introduce yourself in one sentence.",
    "What is the capital of France, and why is it famous?",
]
PRETRAIN_PROMPTS = [
    "人工智能是",
    "中国的首都是",
    "太阳系中最大的行星",
    "水在一个标准大气压下的沸点是",
    "The theory of relativity",
]


class Printer:
    """Streams one answer to stdout: reasoning dimmed (or in [think] markers), the answer plainly."""

    def __init__(self, show_thinking: bool, out=None):
        self.out, self.show_thinking = out or sys.stdout, show_thinking
        self.tty = self.out.isatty()
        self.part = None  # the kind of text printed last

    def write(self, kind: str, text: str):
        if kind == "reasoning" and not self.show_thinking:
            return
        if kind == "tool_call":
            kind, text = "content", f"[tool_call] {text['name']}({text['arguments']})"
        if kind != self.part:
            self._close()
            if kind == "reasoning":
                self.out.write("\033[2m" if self.tty else "[think] ")
            self.part = kind
        self.out.write(text)
        self.out.flush()

    def _close(self):
        if self.part == "reasoning":
            self.out.write("\033[0m\n" if self.tty else " [/think]\n")
        self.part = None

    def end(self):
        self._close()
        self.out.write("\n")
        self.out.flush()


def read_prompts(path: str):
    """-> list of (prompt shown/recorded, messages, tools or None). Errors name file:line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--prompts_file: file not found: {p}")
    items = []
    if p.suffix not in (".jsonl", ".json"):  # plain text: one prompt per non-blank line
        lines = p.read_text(encoding="utf-8").split("\n")
        items = [(line, [{"role": "user", "content": line}], None) for line in lines if line.strip()]
    else:
        for lineno, rec in iter_jsonl(p):
            if isinstance(rec, dict) and isinstance(rec.get("prompt"), str):
                items.append((rec["prompt"], [{"role": "user", "content": rec["prompt"]}], None))
            elif isinstance(rec, dict) and isinstance(rec.get("conversations"), list) and rec["conversations"]:
                turns = rec["conversations"]
                if not all(isinstance(t, dict) and isinstance(t.get("content") or "", str) and
                           t.get("role") in ("system", "user", "assistant", "tool") for t in turns):
                    raise DataFormatError(f"{p}:{lineno}: each turn must be {{\"role\", \"content\"}} with role "
                                     f"system/user/assistant/tool")
                if turns[-1]["role"] == "assistant" and len(turns) > 1:
                    turns = turns[:-1]  # the reference answer
                users = [t["content"] for t in turns if t["role"] == "user"]
                if not users:
                    raise DataFormatError(f"{p}:{lineno}: the conversation has no user turn")
                items.append((users[-1], turns, rec.get("tools")))
            else:
                raise DataFormatError(f'{p}:{lineno}: expected {{"prompt": "..."}} or {{"conversations": [...]}}')
    if not items:
        raise DataFormatError(f"--prompts_file {p}: no prompts in it")
    return items


def answer(model, tokenizer, prompt_ids, args, printer, in_thinking=False) -> dict:
    """Generate one reply, printing it as it comes; -> {"answer", "reasoning", "tokens", "tokens_per_s"}.
    `in_thinking`: the prompt itself opened a <think> block."""
    reply = ReplyStream(tokenizer, in_thinking=in_thinking, eos_token_id=tokenizer.eos_token_id)
    parts = {"content": [], "reasoning": []}

    def handle(events):
        for kind, value in events:
            printer.write(kind, value)
            if kind == "tool_call":
                kind, value = "content", f"<tool_call>{json.dumps(value, ensure_ascii=False)}</tool_call>"
            parts[kind].append(value)

    n, t0, t_first = 0, time.perf_counter(), None
    for tok in stream_tokens(model, prompt_ids, args.max_new_tokens, args.temperature, args.top_p,
                             repetition_penalty=args.repetition_penalty, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id or 0):
        n += 1
        if t_first is None:
            t_first = time.perf_counter()
        handle(reply.push(tok))
    handle(reply.finish())
    t_end = time.perf_counter()
    printer.end()
    # Decode speed: tokens after the first over the time after the first (the prompt's prefill is excluded).
    decode_s = t_end - (t_first or t_end)
    tps = (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0
    if args.show_speed:
        ttft = ((t_first or t_end) - t0) * 1000
        print(f"[{n} tokens, {tps:.1f} tokens/s, first token {ttft:.0f} ms]\n", flush=True)
    return {"answer": "".join(parts["content"]), "reasoning": "".join(parts["reasoning"]), "tokens": n,
            "tokens_per_s": round(tps, 2)}


def prompt_source(args, raw: bool):
    """Built-in or typed prompts: yields (prompt text, None, None) one at a time (stdin is read lazily)."""
    if args.mode == "auto":
        for p in (PRETRAIN_PROMPTS if raw else CHAT_PROMPTS):
            yield p, None, None
    else:
        while True:
            try:
                line = input("👶: ")
            except EOFError:
                return
            if line.strip().lower() in ("exit", "quit"):
                return
            if line.strip():
                yield line, None, None


def main(argv=None):
    parser = argparse.ArgumentParser(description="Chat with a MiniMind model in the terminal")
    add_model_args(parser)
    parser.add_argument("--mode", type=str, default="auto", choices=["auto", "interactive"])
    parser.add_argument("--prompts_file", type=str, default=None, help=".txt (one prompt per line) or .jsonl")
    parser.add_argument("--output", type=str, default=None, help="also write the answers to this JSONL file")
    parser.add_argument("--historys", type=int, default=0, help="carried history messages (even: user+assistant)")
    parser.add_argument("--max_new_tokens", type=int, default=8192)
    parser.add_argument("--temperature", type=float, default=0.85, help="0 = greedy")
    parser.add_argument("--top_p", type=float, default=0.85)
    parser.add_argument("--repetition_penalty", type=float, default=1.0)
    parser.add_argument("--show_thinking", type=int, default=1, choices=[0, 1],
                        help="display only: 0 hides the reasoning (the model still writes it)")
    add_thinking_arg(parser)  # --enable_thinking / --open_thinking 0|1: whether the model reasons at all
    parser.add_argument("--show_speed", type=int, default=1, choices=[0, 1])
    parser.add_argument("--seed", type=int, default=None, help="fix the sampling randomness")
    args = parser.parse_args(argv)
    if args.historys < 0 or args.historys % 2:
        parser.error(f"--historys must be an even number >= 0 (user + assistant pairs), got {args.historys}")
    if args.temperature < 0 or not 0 <= args.top_p <= 1:
        parser.error("--temperature must be >= 0 and --top_p in [0, 1]")

    with exit_on_user_error():  # a bad prompts file or weights: one `error:` line, exit status 2
        items = read_prompts(args.prompts_file) if args.prompts_file else None  # checked before the slow load
        model, tokenizer, name = load_model(args)
    # Pretrain weights never saw the chat template: they continue text, starting from BOS like their data.
    raw = args.weight == "pretrain" and args.load_from == "model"
    prompts = iter(items) if items is not None else prompt_source(args, raw)
    if args.seed is not None:
        setup_seed(args.seed)
    printer = Printer(bool(args.show_thinking))
    history, records = [], []
    how = "text continuation (no chat template)" if raw else f"chat, carrying {args.historys} history messages"
    quit_hint = "; Ctrl-D or 'exit' to quit" if args.mode == "interactive" and items is None else ""
    print(f"[{name}] {how}{quit_hint}", flush=True)
    for shown, messages, tools in prompts:
        if raw:
            text = tokenizer.bos_token + shown
        else:
            if messages is None:  # interactive / auto: carry the last --historys messages
                messages = history[-args.historys:] if args.historys else []
                messages = messages + [{"role": "user", "content": shown}]
            text = chat_prompt(tokenizer, messages, tools, enable_thinking=thinking_arg(args))
        prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
        if args.mode == "auto" or args.prompts_file:
            print(f"👶: {shown}", flush=True)
        print("🤖: ", end="", flush=True)
        result = answer(model, tokenizer, prompt_ids, args, printer, text.rstrip().endswith("<think>"))
        history += [{"role": "user", "content": shown}, {"role": "assistant", "content": result["answer"]}]
        rec = {"prompt": shown, "answer": result["answer"], "tokens": result["tokens"],
               "tokens_per_s": result["tokens_per_s"], "prompt_tokens": len(prompt_ids)}
        if result["reasoning"]:
            rec["reasoning"] = result["reasoning"]
        records.append(rec)
    if args.output:
        # atomic: a crash never leaves half a file
        out = atomic_write_text(args.output, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
        print(f"wrote {len(records)} answers to {out}")
    return records


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
