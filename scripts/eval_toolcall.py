"""A scored tool-call evaluation: does the model call the right tool, with the right arguments, and then answer
right? Local weights (our batched decoding engine) or any OpenAI-compatible endpoint (our server, vLLM, ollama).

    python scripts/eval_toolcall.py --weight full_sft                            # out/full_sft_512.pth
    python scripts/eval_toolcall.py --weight agent --preset minimind3 --tokenizer_path ../minimind3_tokenizer
    python scripts/eval_toolcall.py --base_url http://127.0.0.1:8998/v1          # scripts/serve_openai_api.py
    python scripts/eval_toolcall.py --base_url http://127.0.0.1:11434/v1 --model qwen3:0.6b     # ollama

Each task is one episode, up to --max_turns model turns: the model replies; its calls (<tool_call> blocks, or an
endpoint's `tool_calls`) run through model/tools.py's call_tool and go back as `tool` messages; a reply without
calls is the final answer. Tasks run together: every turn is one batch over the episodes still going.

Tasks (JSONL, one per line; dataset/sample/toolcall_eval.jsonl holds 43 of ours, written for this eval and
kept out of the SFT and agent-RL sample data):
    {"id": "calc-01", "question": "What is 23*47?", "tools": ["calculate_math", "unit_converter"],
     "calls": [{"name": "calculate_math", "arguments": {"expression": "23*47"}}], "answer": ["1081"]}
    question   the user message (and an optional "system" prompt)
    tools      names from model/tools.py offered to the model (default: all of them)
    calls      the gold calls, in any order; [] means the model should answer without a tool
    answer     acceptable final answers (any one will do), or null: any non-empty reply. An answer that reads as
               a number matches any number in the reply numerically (relative tolerance 1e-6; "1,081" is 1081);
               other text matches as a substring (case and whitespace ignored); a list inside the list needs all
               of its parts (two lookups, both results in the reply).

Metrics (tasks with gold calls, unless said otherwise)
    valid_json     call attempts that parse as {"name", "arguments": {...}} / all call attempts (<tool_call> blocks
                   or API tool_calls), over every turn of every task
    right_tool     the set of tools called equals the gold set
    args_exact     the calls equal the gold calls as a multiset, arguments compared as normalised JSON: key order
                   ignored, schema defaults filled in, numbers numerically (3 == 3.0 == "3"), strings without
                   case or whitespace. A retry after a failed call counts against it.
    result_match   every gold call's result was obtained by some successful call (a lenient args_exact: "7*6" or
                   "kilogram" give the same result as "6*7" or "kg")
    no_tool_ok     tasks without gold calls where the model made no call attempt
    answer_acc     final answer correct (all tasks; an episode still calling after --max_turns is wrong)
    finished       episodes that ended with an answer within --max_turns (all tasks)
    turns          model turns per episode (all tasks)

Output: a table on stdout and a JSON file (--output; written atomically) with the settings, the metrics and
every task's turns, calls, results and scores.
"""
import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import openai  # noqa: E402
import torch  # noqa: E402

from dataset.lm_dataset import iter_jsonl  # noqa: E402
from model.errors import UserError, run_main  # noqa: E402
from model.generation import generate, is_minimind, stream_tokens  # noqa: E402
from model.tools import TOOL_NAMES, parse_tool_calls, run_tool, tool_schemas  # noqa: E402
from scripts.model_loading import add_model_args, chat_prompt, load_model, split_thinking  # noqa: E402
from scripts.script_utils import write_json  # noqa: E402

DEFAULT_TASKS = ROOT / "dataset" / "sample" / "toolcall_eval.jsonl"
DEFAULT_OUTPUT = ROOT / "out" / "eval_toolcall.json"


class TaskFileError(UserError, ValueError):
    """A task line that is not a valid task (names file:line and the field)."""


# ================================================================================================================
# Tasks
# ================================================================================================================
@dataclass
class Task:
    id: str
    question: str
    tools: List[str]
    calls: List[dict]              # [{"name", "arguments": dict}]
    answer: Optional[list]         # alternatives; None: any non-empty reply
    system: Optional[str] = None
    where: str = ""                # file:line, for messages

    def messages(self) -> List[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": self.question}]


def parse_task(rec, where: str) -> Task:
    """One JSONL record -> Task; anything malformed raises TaskFileError naming `where` (file:line) and the field."""
    def bad(msg):
        return TaskFileError(f"{where}: {msg}")

    if not isinstance(rec, dict):
        raise bad(f"a task must be a JSON object, got {type(rec).__name__}")
    question = rec.get("question")
    if not isinstance(question, str) or not question.strip():
        raise bad('"question" must be a non-empty string')
    tools = rec.get("tools", TOOL_NAMES)
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        raise bad('"tools" must be a list of tool names')
    unknown = [t for t in tools if t not in TOOL_NAMES]
    if unknown:
        raise bad(f'"tools": unknown tool(s) {", ".join(unknown)}; known: {", ".join(TOOL_NAMES)}')
    calls = rec.get("calls", [])
    if not isinstance(calls, list):
        raise bad('"calls" must be a list of {"name", "arguments"}')
    for i, c in enumerate(calls):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not isinstance(c.get("arguments", {}),
                                                                                         dict):
            raise bad(f'"calls"[{i}] must be {{"name": str, "arguments": object}}')
        if c["name"] not in tools:
            raise bad(f'"calls"[{i}] calls {c["name"]!r}, which is not among the task\'s "tools"')
        result, ok = run_tool(c["name"], c.get("arguments", {}))
        if not ok:
            raise bad(f'"calls"[{i}] fails when run: {result}')
    answer = rec.get("answer")
    if answer is not None:
        answer = answer if isinstance(answer, list) else [answer]
        flat = [a for alt in answer for a in (alt if isinstance(alt, list) else [alt])]
        if not answer or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) and str(a).strip()
                                 for a in flat):
            raise bad('"answer" must be null, a string or number, or a list of them (a list inside: all of it)')
    system = rec.get("system")
    if system is not None and not isinstance(system, str):
        raise bad('"system" must be a string')
    return Task(str(rec.get("id", where)), question, list(tools),
                [{"name": c["name"], "arguments": dict(c.get("arguments", {}))} for c in calls], answer, system,
                where)


def load_tasks(path) -> List[Task]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--tasks: no such file: {path}")
    tasks = [parse_task(rec, f"{path}:{lineno}") for lineno, rec in iter_jsonl(path)]
    if not tasks:
        raise TaskFileError(f"{path}: no tasks")
    return tasks


# ================================================================================================================
# Scoring
# ================================================================================================================
NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def as_number(x) -> Optional[float]:
    """A number, or a string that is exactly one ("1,081" too); else None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, str) and NUMBER_RE.fullmatch(x.strip()):
        return float(x.strip().replace(",", ""))
    return None


def same_number(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s).casefold()


def canonical(value):
    """Arguments -> a comparable form: numbers (and numeric strings) as rounded floats, strings without case or
    whitespace, dict keys sorted."""
    n = as_number(value)
    if n is not None:
        return ["num", float(f"{n:.9g}")]
    if isinstance(value, str):
        return _squash(value)
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def _with_defaults(name: str, args: dict) -> dict:
    """The call's arguments with the schema's defaults filled in (amount=1 written or not is the same call)."""
    try:
        props = tool_schemas([name])[0]["function"]["parameters"]["properties"]
    except (ValueError, KeyError, IndexError):  # an unknown tool: nothing to fill
        return args
    return {**{k: p["default"] for k, p in props.items() if "default" in p}, **args}


def call_key(name: str, args: dict) -> str:
    return json.dumps([name, canonical(_with_defaults(name, args))], ensure_ascii=False, sort_keys=True)


def answer_matches(reply: str, answer: Optional[list]) -> bool:
    """Whether the final reply holds one of the acceptable answers (see the module docstring)."""
    if answer is None:
        return bool(reply.strip())
    numbers = [float(m.replace(",", "")) for m in NUMBER_RE.findall(reply)]
    text = _squash(reply)

    def part_ok(part) -> bool:
        n = as_number(part)
        if n is not None:
            return any(same_number(x, n) for x in numbers)
        return _squash(str(part)) in text

    return any(all(part_ok(p) for p in (alt if isinstance(alt, list) else [alt])) for alt in answer)


@dataclass
class Turn:
    """One model reply: its text, its valid calls ({"name", "arguments" (JSON text of an object)}), the number
    of call attempts that were not valid calls, and what running the calls gave."""
    content: str
    calls: List[dict] = field(default_factory=list)
    invalid: int = 0
    reasoning: str = ""
    results: List[dict] = field(default_factory=list)  # [{"name", "arguments", "result", "ok"}]
    error: Optional[str] = None  # the endpoint refused this turn (e.g. the conversation outgrew its context)


def split_valid(calls: Sequence[dict]):
    """Parsed calls -> (valid calls, number invalid): a valid call's arguments are a JSON object."""
    valid, invalid = [], 0
    for c in calls:
        try:
            ok = isinstance(json.loads(c["arguments"] or "{}"), dict)
        except (ValueError, TypeError, RecursionError):
            ok = False
        if ok:
            valid.append({"name": c["name"], "arguments": c["arguments"] or "{}"})
        else:
            invalid += 1
    return valid, invalid


def turn_from_text(text: str) -> Turn:
    """A raw completion (local model, or an endpoint without a tool parser) -> Turn."""
    reasoning, answer = split_thinking(text)
    content, calls = parse_tool_calls(answer)
    valid, invalid = split_valid(calls)
    return Turn(content, valid, invalid + answer.count("<tool_call>") - len(calls), reasoning)


def score_task(task: Task, turns: List[Turn]) -> dict:
    calls = [c for t in turns for c in t.calls]
    attempts = sum(len(t.calls) + t.invalid for t in turns)
    finished = bool(turns) and not turns[-1].calls and turns[-1].error is None
    scores = {"attempts": attempts, "valid": len(calls), "turns": len(turns), "finished": finished,
              "answer_ok": finished and answer_matches(turns[-1].content, task.answer)}
    if task.calls:
        gold_keys = sorted(call_key(c["name"], c["arguments"]) for c in task.calls)
        keys = sorted(call_key(c["name"], json.loads(c["arguments"])) for c in calls)
        got = Counter(r["result"] for t in turns for r in t.results if r["ok"])
        scores.update(right_tool={c["name"] for c in calls} == {c["name"] for c in task.calls},
                      args_exact=keys == gold_keys,
                      result_match=all(got[run_tool(c["name"], c["arguments"])[0]] > 0 for c in task.calls))
    else:
        scores["no_tool_ok"] = attempts == 0
    return scores


def summarize(scored: List[dict]) -> dict:
    """Per-task scores -> the metrics (rates in [0, 1]; None where no task counts)."""
    def rate(key, rows):
        rows = [r for r in rows if key in r]
        return (sum(bool(r[key]) for r in rows) / len(rows) if rows else None), len(rows)

    attempts = sum(r["attempts"] for r in scored)
    m = {"tasks": len(scored), "call_attempts": attempts,
         "valid_json": sum(r["valid"] for r in scored) / attempts if attempts else None}
    for key, name in (("right_tool", "right_tool"), ("args_exact", "args_exact"), ("result_match", "result_match"),
                      ("no_tool_ok", "no_tool_ok"), ("answer_ok", "answer_acc"), ("finished", "finished")):
        m[name], m[f"n_{name}"] = rate(key, scored)
    m["mean_turns"] = sum(r["turns"] for r in scored) / len(scored) if scored else None
    return m


# ================================================================================================================
# Episodes
# ================================================================================================================
# A policy takes the conversations still going and the tool schemas offered in each, and returns one Turn each.
Policy = Callable[[List[List[dict]], List[List[dict]]], List[Turn]]


def run_episodes(tasks: List[Task], policy: Policy, max_turns: int, log=print) -> List[List[Turn]]:
    """Play every task to its final answer or max_turns; each turn is one policy call over all open episodes."""
    convs = [t.messages() for t in tasks]
    schemas = [tool_schemas(t.tools) for t in tasks]
    turns: List[List[Turn]] = [[] for _ in tasks]
    open_ = list(range(len(tasks)))
    for turn_no in range(max_turns):
        if not open_:
            break
        t0 = time.perf_counter()
        replies = policy([convs[i] for i in open_], [schemas[i] for i in open_])
        still = []
        for i, reply in zip(open_, replies):
            turns[i].append(reply)
            if reply.error is not None or not reply.calls:
                continue  # a final answer (or a refused turn): the episode is over
            ids = [f"call_{turn_no}_{k}" for k in range(len(reply.calls))]
            convs[i].append({"role": "assistant", "content": reply.content, "tool_calls": [
                {"id": cid, "type": "function", "function": c} for cid, c in zip(ids, reply.calls)]})
            for cid, c in zip(ids, reply.calls):
                result, ok = run_tool(c["name"], c["arguments"])
                reply.results.append({**c, "result": result, "ok": ok})
                convs[i].append({"role": "tool", "tool_call_id": cid, "content": result})
            still.append(i)
        log(f"turn {turn_no + 1}: {len(open_)} episodes, {len(open_) - len(still)} finished "
            f"({time.perf_counter() - t0:.1f}s)")
        open_ = still
    return turns


def evaluate(tasks: List[Task], policy: Policy, max_turns: int, log=print) -> dict:
    """Run and score: {"metrics": ..., "tasks": [per-task record]}."""
    episodes = run_episodes(tasks, policy, max_turns, log)
    records = []
    for task, turns in zip(tasks, episodes):
        records.append({"id": task.id, "where": task.where, "question": task.question,
                        "gold_calls": task.calls, "answer": task.answer,
                        "final": turns[-1].content if turns else "",
                        "scores": score_task(task, turns), "turns": [asdict(t) for t in turns]})
    return {"metrics": summarize([r["scores"] for r in records]), "tasks": records}


# ================================================================================================================
# Policies: local weights, an OpenAI-compatible endpoint
# ================================================================================================================
class LocalPolicy:
    """Our model through model/generation.py: the prompts of a turn are generated as batches of --batch_size
    (MiniMind: one batched, KV-cached decode; other transformers models: one prompt at a time)."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 batch_size: int = 16, thinking: Optional[dict] = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size, self.thinking = max(1, batch_size), thinking or {}

    def __call__(self, conversations, tools):
        tok = self.tokenizer
        eos, pad = tok.eos_token_id, tok.pad_token_id if tok.pad_token_id is not None else 0
        texts = [chat_prompt(tok, msgs, schemas, **self.thinking) for msgs, schemas in zip(conversations, tools)]
        prompts = [tok(t, add_special_tokens=False).input_ids for t in texts]
        outs: List[List[int]] = []
        for s in range(0, len(prompts), self.batch_size):
            batch = prompts[s:s + self.batch_size]
            if is_minimind(self.model):
                gen = generate(self.model, batch, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                               top_p=self.top_p, eos_token_id=eos, pad_token_id=pad)
                outs += [r[m.bool()].tolist() for r, m in zip(gen.responses, gen.response_mask)]
            else:
                with torch.inference_mode():
                    outs += [list(stream_tokens(self.model, p, self.max_new_tokens, self.temperature, self.top_p,
                                                eos_token_id=eos, pad_token_id=pad)) for p in batch]
        turns = []
        for text, ids in zip(texts, outs):
            reply = tok.decode([t for t in ids if t != eos], skip_special_tokens=True)
            # A template that opens <think> for the model: the reply is reasoning until </think>.
            turns.append(turn_from_text(("<think>" if text.rstrip().endswith("<think>") else "") + reply))
        return turns


class APIPolicy:
    """An OpenAI-compatible endpoint through the official SDK: tools sent as `tools`, calls read from
    `message.tool_calls` (and from <tool_call> text left in the content by a server without a tool parser).
    The conversations of a turn are sent --concurrency at a time (a batching server decodes them together)."""

    def __init__(self, base_url: str, api_key: str, model: str, max_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, concurrency: int = 8, extra_body: Optional[dict] = None, timeout: float = 300):
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=2, timeout=timeout)
        self.base_url, self.model, self.max_tokens = base_url, model, max_tokens
        self.temperature, self.top_p, self.concurrency = temperature, top_p, max(1, concurrency)
        self.extra_body = extra_body or None

    def one(self, messages, tools) -> Turn:
        try:
            r = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=self.temperature, top_p=self.top_p,
                max_tokens=self.max_tokens, extra_body=self.extra_body, **({"tools": tools} if tools else {}))
        except openai.BadRequestError as e:  # this conversation only (e.g. it outgrew the context): a lost turn
            return Turn("", error=str(e))
        except openai.APIError as e:  # unreachable, wrong key, server error: nothing to evaluate
            raise UserError(f"--base_url {self.base_url}: {e}") from None
        msg = r.choices[0].message
        extra = msg.model_extra or {}
        text = turn_from_text(msg.content or "")
        calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in msg.tool_calls or []]
        valid, invalid = split_valid(calls)
        return Turn(text.content, valid + text.calls, invalid + text.invalid,
                    extra.get("reasoning_content") or extra.get("reasoning") or text.reasoning)

    def __call__(self, conversations, tools):
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self.one, conversations, tools))


# ================================================================================================================
# The command
# ================================================================================================================
def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def table(metrics: dict) -> str:
    m = metrics
    with_calls, without = f"{m['n_right_tool']} tasks with calls", f"{m['n_no_tool_ok']} tasks without calls"
    rows = [("valid JSON calls", pct(m["valid_json"]), f"{m['call_attempts']} call attempts"),
            ("right tool", pct(m["right_tool"]), with_calls),
            ("argument exact match", pct(m["args_exact"]), with_calls),
            ("tool results match", pct(m["result_match"]), with_calls),
            ("no call when none needed", pct(m["no_tool_ok"]), without),
            ("final-answer accuracy", pct(m["answer_acc"]), f"{m['tasks']} tasks"),
            ("finished within max_turns", pct(m["finished"]), f"{m['tasks']} tasks"),
            ("turns per task", "-" if m["mean_turns"] is None else f"{m['mean_turns']:.2f}", f"{m['tasks']} tasks")]
    w = max(len(r[0]) for r in rows)
    return "\n".join([f"{'metric':<{w}}  {'value':>7}  over", "-" * (w + 30)] +
                     [f"{a:<{w}}  {b:>7}  {c}" for a, b, c in rows])


def main(argv=None):
    p = argparse.ArgumentParser(description="Scored tool-call evaluation (local weights or an OpenAI endpoint)")
    add_model_args(p)
    p.add_argument("--tasks", type=str, default=str(DEFAULT_TASKS), help="task JSONL (see the module docstring)")
    p.add_argument("--output", type=str, default=str(DEFAULT_OUTPUT), help="results JSON (written atomically)")
    p.add_argument("--max_turns", type=int, default=4, help="model turns per task (calls + the final answer)")
    p.add_argument("--max_new_tokens", type=int, default=256, help="per turn")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (reproducible scores)")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--batch_size", type=int, default=16, help="local weights: episodes decoded together")
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    p.add_argument("--enable_thinking", type=int, default=None, choices=[0, 1],
                   help="the chat template's thinking switch (mapped to open_thinking for minimind-3's tokenizer)")
    p.add_argument("--base_url", type=str, default=None,
                   help="evaluate an OpenAI-compatible endpoint instead of local weights, e.g. http://127.0.0.1:8998/v1")
    p.add_argument("--api_key", type=str, default="none")
    p.add_argument("--model", type=str, default="minimind", help="the endpoint's model name")
    p.add_argument("--concurrency", type=int, default=8, help="endpoint: requests in flight")
    args = p.parse_args(argv)
    if args.max_turns < 1:
        p.error("--max_turns must be >= 1")
    tasks = load_tasks(args.tasks)[:args.limit]
    thinking = None if args.enable_thinking is None else bool(args.enable_thinking)
    if args.base_url:
        name = f"{args.model} @ {args.base_url}"
        policy = APIPolicy(args.base_url, args.api_key, args.model, args.max_new_tokens, args.temperature,
                           args.top_p, args.concurrency,
                           # vLLM's field, which our server reads too: the server maps it to its template's switch
                           None if thinking is None else {"chat_template_kwargs": {"enable_thinking": thinking}})
    else:
        model, tokenizer, name = load_model(args)
        policy = LocalPolicy(model, tokenizer, args.max_new_tokens, args.temperature, args.top_p, args.batch_size,
                             None if thinking is None else {"enable_thinking": thinking})
    print(f"tool-call eval: {len(tasks)} tasks from {args.tasks}, model {name}, max_turns {args.max_turns}")
    t0 = time.perf_counter()
    result = evaluate(tasks, policy, args.max_turns)
    seconds = time.perf_counter() - t0
    print(table(result["metrics"]))
    settings = {k: getattr(args, k) for k in ("tasks", "max_turns", "max_new_tokens", "temperature", "top_p",
                                              "enable_thinking", "base_url", "batch_size")}
    out = write_json({"kind": "eval_toolcall", "model": name, "settings": settings, "seconds": round(seconds, 2),
                      **result}, args.output)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    run_main(main)
