"""A scored tool-call evaluation: does the model call the right tool, with the right arguments, and then answer
right? Local weights (our batched decoding engine) or any OpenAI-compatible endpoint (our server, vLLM, ollama).

    python scripts/eval_toolcall.py --weight full_sft                            # out/full_sft_512.pth
    python scripts/eval_toolcall.py --weight agent --preset minimind3 --tokenizer_path ../minimind3_tokenizer
    python scripts/eval_toolcall.py --base_url http://127.0.0.1:8998/v1          # scripts/serve_openai_api.py
    python scripts/eval_toolcall.py --base_url http://127.0.0.1:11434/v1 --model qwen3:0.6b     # ollama

Each task is one episode of model/tool_loop.py (the same loop as agent RL and the web demo), up to --max_turns
model turns: the model replies; its calls (<tool_call> blocks, or an endpoint's `tool_calls`) run through
model/tools.py and go back as `tool` messages; a reply without calls is the final answer. Local weights play all
episodes in one running batch, each episode's tool results appended to its live KV cache.
    python scripts/eval_toolcall.py --weight tool_sft --interactive --tools all   # ask your own questions

Tasks (JSONL, one per line; dataset/sample/toolcall_eval.jsonl holds 47 of ours, written for this eval and
kept out of the SFT and agent-RL sample data):
    {"id": "calc-01", "question": "What is 23*47?", "tools": ["calculate_math", "unit_converter"],
     "calls": [{"name": "calculate_math", "arguments": {"expression": "23*47"}}], "answer": ["1081"]}
    question   the user message (and an optional "system" prompt)
    tools      names from model/tools.py offered to the model (default: all of them)
    calls      the gold calls, in any order; [] means the model should answer without a tool
    answer     acceptable final answers (any one will do), or null: any non-empty reply. An answer that reads as
               a number matches any number in the reply numerically ("1,081" is 1081; model/scoring.py
               same_number's tolerance); other text matches as a substring (case and whitespace ignored); a list
               inside the list needs all of its parts (two lookups, both results in the reply). The rules are
               model/scoring.py's answer_matches, shared with the agent reward (trainer/train_agent.py).

Metrics (tasks with gold calls, unless said otherwise)
    valid_json     call attempts that parse as {"name", "arguments": {...}} / all call attempts (<tool_call> blocks
                   or API tool_calls), over every turn of every task
    right_tool     the set of tools called equals the gold set
    args_exact     the calls equal the gold calls as a multiset, arguments compared as the tool reads them
                   (model/tools.normalize_arguments: schema defaults filled in, "公里" == "kilometers" == "km",
                   "美元" == "USD", "纽约" == "America/New_York"), then numbers numerically (3 == 3.0 == "3") and
                   strings without case or whitespace ("23 * 47" == "23*47"; "47*23" is another call).
                   A retry after a failed call counts against it.
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
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import openai  # noqa: E402
import torch  # noqa: E402

from dataset.lm_dataset import iter_jsonl  # noqa: E402
from model.chat_template import add_thinking_arg, thinking_arg  # noqa: E402
from model.errors import UserError, run_main  # noqa: E402
from model.generation import Sampling, is_minimind, stream_tokens  # noqa: E402
from model.scoring import answer_matches, as_number, squash  # noqa: E402
from model.tool_loop import Episode, Turn, new_episodes, run_episodes, run_turns, split_valid, turn_from_text  # noqa
from model.tools import TOOL_NAMES, normalize_arguments, run_tool, tool_schemas  # noqa: E402
from scripts.model_loading import add_model_args, chat_prompt, load_model  # noqa: E402
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
# Final answers are checked by model/scoring.py answer_matches: the same `found` rule as the agent reward's answer
# term (trainer/train_agent.py), so a reply this eval counts as right is one that term pays 1 for. Argument
# normalisation below reads numbers with the same as_number.


def canonical(value):
    """Arguments -> a comparable form: numbers (and numeric strings) as rounded floats, strings without case or
    whitespace, dict keys sorted."""
    n = as_number(value)
    if n is not None:
        return ["num", float(f"{n:.9g}")]
    if isinstance(value, str):
        return squash(value)
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def call_key(name: str, args: dict) -> str:
    """Two calls are the same call when the tool reads their arguments the same way (model/tools.py
    normalize_arguments: schema defaults filled in, "公里" and "kilometers" both km, "美元" USD, "纽约"
    America/New_York); a call the tool refuses is compared as written."""
    normal = normalize_arguments(name, args)
    return json.dumps([name, canonical(args if normal is None else normal)], ensure_ascii=False, sort_keys=True)


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
# Episodes: model/tool_loop.py plays them (the same loop as agent RL and the web demo)
# ================================================================================================================
def evaluate(tasks: List[Task], policy, max_turns: int, log=print) -> dict:
    """Play and score every task: {"metrics": ..., "tasks": [per-task record]}. `policy` is a LocalPolicy (our
    model: one running batch, tool results appended to the live KV cache) or any tool_loop.Policy."""
    episodes = [Episode(messages=t.messages(), tools=tool_schemas(t.tools), thinking=policy.thinking)
                for t in tasks]
    if isinstance(policy, LocalPolicy) and is_minimind(policy.model):
        policy.play(episodes, max_turns)
    else:
        run_turns(episodes, policy, max_turns, log=log)
    records = []
    for task, ep in zip(tasks, episodes):
        records.append({"id": task.id, "where": task.where, "question": task.question,
                        "gold_calls": task.calls, "answer": task.answer,
                        "final": ep.turns[-1].content if ep.turns else "",
                        "scores": score_task(task, ep.turns), "turns": [asdict(t) for t in ep.turns]})
    return {"metrics": summarize([r["scores"] for r in records]), "tasks": records}


# ================================================================================================================
# Policies: local weights, an OpenAI-compatible endpoint
# ================================================================================================================
class LocalPolicy:
    """Local weights. Our model plays every episode in one running batch (tool_loop.run_episodes: greedy or
    sampled, tool results appended to the live KV cache); another transformers model generates a turn at a time
    (model/generation.stream_tokens), one conversation after the other."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 batch_size: int = 64, thinking: Optional[bool] = None, seed: int = 0):
        self.model, self.tokenizer, self.thinking = model, tokenizer, thinking
        self.max_new_tokens, self.temperature, self.top_p, self.seed = max_new_tokens, temperature, top_p, seed
        self.batch_size = max(1, batch_size)

    def play(self, episodes: List[Episode], max_turns: int):
        """Our model: --batch_size episodes at a time in one running batch, to their ends."""
        tok, limit = self.tokenizer, self.model.config.max_position_embeddings
        gen = torch.Generator(device=next(self.model.parameters()).device).manual_seed(self.seed)
        for s in range(0, len(episodes), self.batch_size):
            part = episodes[s:s + self.batch_size]
            fresh = new_episodes(tok, [e.messages for e in part], [e.tools for e in part], [e.thinking for e in part])
            run_episodes(self.model, tok, fresh, max_turns=max_turns, max_new_tokens=self.max_new_tokens,
                         max_total_len=limit, sampling=Sampling(self.temperature, self.top_p, generator=gen))
            for e, f in zip(part, fresh):
                e.__dict__.update(f.__dict__)

    def __call__(self, episodes: List[Episode]) -> List[Turn]:
        tok = self.tokenizer
        eos, pad = tok.eos_token_id, tok.pad_token_id if tok.pad_token_id is not None else 0
        turns = []
        for e in episodes:
            text = chat_prompt(tok, e.messages, e.tools, enable_thinking=e.thinking)
            with torch.inference_mode():
                ids = list(stream_tokens(self.model, tok(text, add_special_tokens=False).input_ids,
                                         self.max_new_tokens, self.temperature, self.top_p, eos_token_id=eos,
                                         pad_token_id=pad))
            reply = tok.decode([t for t in ids if t != eos], skip_special_tokens=True)
            # A template that opens <think> for the model: the reply is reasoning until </think>.
            turns.append(turn_from_text(("<think>" if text.rstrip().endswith("<think>") else "") + reply))
        return turns


class APIPolicy:
    """An OpenAI-compatible endpoint through the official SDK: tools sent as `tools`, calls read from
    `message.tool_calls` (and from <tool_call> text left in the content by a server without a tool parser).
    The conversations of a turn are sent --concurrency at a time (a batching server decodes them together)."""

    def __init__(self, base_url: str, api_key: str, model: str, max_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, concurrency: int = 8, thinking: Optional[bool] = None, timeout: float = 300):
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=2, timeout=timeout)
        self.base_url, self.model, self.max_tokens = base_url, model, max_tokens
        self.temperature, self.top_p, self.concurrency = temperature, top_p, max(1, concurrency)
        self.thinking = thinking
        # vLLM's field, which our server reads too: the server maps it to its template's switch
        self.extra_body = None if thinking is None else {"chat_template_kwargs": {"enable_thinking": thinking}}

    def one(self, episode: Episode) -> Turn:
        try:
            r = self.client.chat.completions.create(
                model=self.model, messages=episode.messages, temperature=self.temperature, top_p=self.top_p,
                max_tokens=self.max_tokens, extra_body=self.extra_body,
                **({"tools": episode.tools} if episode.tools else {}))
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
                    extra.get("reasoning_content") or extra.get("reasoning") or text.reasoning, text=msg.content or "",
                    finished=r.choices[0].finish_reason != "length")

    def __call__(self, episodes: List[Episode]) -> List[Turn]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self.one, episodes))


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


def show_episode(ep: Episode, out=print):
    for turn in ep.turns:
        if turn.reasoning:
            out(f"  [thinking] {turn.reasoning}")
        for r in turn.results:
            out(f"  [call] {r['name']}({r['arguments']}) -> {r['result']}")
        if turn.invalid:
            out(f"  [{turn.invalid} malformed call(s)] {turn.text}")
    out(f"assistant: {ep.answer if ep.answer is not None else '(no final answer within --max_turns)'}")


def interactive(policy, tools: List[dict], max_turns: int, read=input, out=print):
    """Upstream's interactive mode: type a question, watch the calls, the results and the answer."""
    out(f"tools offered: {', '.join(t['function']['name'] for t in tools)}. Empty line or Ctrl-D to quit.")
    while True:
        try:
            question = read("you: ").strip()
        except EOFError:
            return
        if not question:
            return
        ep = Episode(messages=[{"role": "user", "content": question}], tools=tools, thinking=policy.thinking)
        if isinstance(policy, LocalPolicy) and is_minimind(policy.model):
            policy.play([ep], max_turns)
        else:
            run_turns([ep], policy, max_turns)
        show_episode(ep, out)


def main(argv=None):
    p = argparse.ArgumentParser(description="Scored tool-call evaluation (local weights or an OpenAI endpoint)")
    add_model_args(p)
    p.add_argument("--tasks", type=str, default=str(DEFAULT_TASKS), help="task JSONL (see the module docstring)")
    p.add_argument("--output", type=str, default=str(DEFAULT_OUTPUT), help="results JSON (written atomically)")
    p.add_argument("--max_turns", type=int, default=4, help="model turns per task (calls + the final answer)")
    p.add_argument("--max_new_tokens", type=int, default=256, help="per turn")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (reproducible scores)")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--batch_size", type=int, default=64, help="local weights: episodes decoded together")
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    add_thinking_arg(p)  # --enable_thinking / --open_thinking 0|1, mapped to the template's switch
    p.add_argument("--base_url", type=str, default=None,
                   help="evaluate an OpenAI-compatible endpoint instead of local weights, e.g. http://127.0.0.1:8998/v1")
    p.add_argument("--api_key", type=str, default="none")
    p.add_argument("--model", type=str, default="minimind", help="the endpoint's model name")
    p.add_argument("--concurrency", type=int, default=8, help="endpoint: requests in flight")
    p.add_argument("--interactive", action="store_true",
                   help="ask your own questions instead of scoring tasks: each is one episode with --tools offered; "
                        "its calls, their results and the answer are printed")
    p.add_argument("--tools", type=str, default="all", help="--interactive: the tools offered (comma-separated)")
    args = p.parse_args(argv)
    if args.max_turns < 1:
        p.error("--max_turns must be >= 1")
    thinking = thinking_arg(args)
    tasks = [] if args.interactive else load_tasks(args.tasks)[:args.limit]
    if args.base_url:
        name = f"{args.model} @ {args.base_url}"
        policy = APIPolicy(args.base_url, args.api_key, args.model, args.max_new_tokens, args.temperature,
                           args.top_p, args.concurrency, thinking)
    else:
        model, tokenizer, name = load_model(args)
        policy = LocalPolicy(model, tokenizer, args.max_new_tokens, args.temperature, args.top_p, args.batch_size,
                             thinking)
    if args.interactive:
        return interactive(policy, tool_schemas(args.tools), args.max_turns)
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
