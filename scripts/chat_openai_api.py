"""Chat with a running MiniMind server (scripts/serve_openai_api.py) through the official `openai` SDK.

    python scripts/serve_openai_api.py --weight full_sft &
    python scripts/chat_openai_api.py --historys 4
    python scripts/chat_openai_api.py --base_url http://host:8998/v1 --api_key sk-local

Reads prompts from stdin until EOF or `exit`, streams each answer; a reasoning model's reasoning_content is
shown dimmed (or between [think] markers when stdout is not a terminal; --show_thinking 0 hides it). Any
OpenAI-compatible server works. --thinking 1|0 (aliases --enable_thinking, --open_thinking) switches the
reasoning itself on or off: it is sent as `chat_template_kwargs: {"enable_thinking": ...}` (vLLM's convention),
which our server maps to the switch its tokenizer's template reads (open_thinking for upstream minimind-3's).
A server that cannot be reached or refuses the request (wrong key, bad value) ends it with one `error:` line.

Tool use (--tools all, or names from model/tools.py such as calculate_math,get_current_time): the tools' schemas
go with every request; when the reply is tool calls, they run here (model/tools.call_tool), their results go
back as `tool` messages, and the model is asked again, until it answers (at most --max_tool_rounds times):

    👶: What is 23*47?
    🤖: [tool_call] calculate_math({"expression": "23*47"})
        [tool_result] {"result": "1081"}
    🤖: 23*47 = 1081.

Streamed tool calls arrive as OpenAI sends them: per call, a delta with `index`, `id` and `function.name`, then
deltas with pieces of `function.arguments`; `read_stream` joins them by index.
"""
import argparse
import os
import sys
from pathlib import Path

import openai
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model.chat_template import add_thinking_arg, thinking_arg  # noqa: E402
from model.errors import UserError, run_main  # noqa: E402
from model.tools import TOOL_NAMES, call_tool, tool_schemas  # noqa: E402


def read_stream(stream, show_thinking: bool, tty: bool):
    """Print a streamed reply as it arrives -> (answer text, tool calls [{"id", "name", "arguments"}])."""
    answer, calls, thinking = [], {}, False
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        # reasoning_content is not part of the OpenAI schema: the SDK keeps unknown fields in model_extra.
        reasoning = (delta.model_extra or {}).get("reasoning_content")
        if reasoning and show_thinking:
            if not thinking:
                print("\033[2m" if tty else "[think] ", end="")
                thinking = True
            print(reasoning, end="", flush=True)
        if delta.content:
            if thinking:
                print("\033[0m\n" if tty else " [/think]\n", end="")
                thinking = False
            print(delta.content, end="", flush=True)
            answer.append(delta.content)
        for tc in delta.tool_calls or []:  # pieces of call number tc.index: join the strings, keep the id
            call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = tc.id or call["id"]
            if tc.function is not None:
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
    if thinking:
        print("\033[0m" if tty else " [/think]", end="")
    return "".join(answer), [calls[i] for i in sorted(calls)]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Terminal chat client for an OpenAI-compatible server")
    parser.add_argument("--base_url", type=str, default="http://127.0.0.1:8998/v1")
    parser.add_argument("--api_key", type=str, default=os.environ.get("MINIMIND_API_KEY", "none"),
                        help="sent as 'Authorization: Bearer KEY' (default: env MINIMIND_API_KEY)")
    parser.add_argument("--model", type=str, default="minimind")
    parser.add_argument("--historys", type=int, default=0, help="carried history messages (even: user+assistant)")
    parser.add_argument("--temperature", type=float, default=0.85)
    parser.add_argument("--top_p", type=float, default=0.85)
    parser.add_argument("--max_tokens", type=int, default=None, help="default: whatever context is left")
    parser.add_argument("--system", type=str, default=None, help="optional system prompt")
    parser.add_argument("--show_thinking", type=int, default=1, choices=[0, 1],
                        help="display only: 0 hides the reasoning_content")
    add_thinking_arg(parser, "--thinking", "--enable_thinking", "--open_thinking",
                     help="1: the model reasons first, 0: it answers directly; sent as chat_template_kwargs "
                          "(unset: the server's default)")
    parser.add_argument("--tools", type=str, default=None,
                        help=f"offer tools and run their calls locally: 'all' or a comma list of "
                             f"{','.join(TOOL_NAMES)}")
    parser.add_argument("--max_tool_rounds", type=int, default=4, help="tool calls -> results rounds per question")
    args = parser.parse_args(argv)
    if args.historys < 0 or args.historys % 2:
        parser.error(f"--historys must be an even number >= 0, got {args.historys}")
    tools = tool_schemas(args.tools) if args.tools else None  # an unknown name: UserError, one error line

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    tty = sys.stdout.isatty()
    history = []
    while True:
        try:
            prompt = input("👶: ")
        except EOFError:
            break
        if prompt.strip().lower() in ("exit", "quit"):
            break
        if not prompt.strip():
            continue
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        messages += (history[-args.historys:] if args.historys else []) + [{"role": "user", "content": prompt}]
        kwargs = {"max_tokens": args.max_tokens} if args.max_tokens else {}
        if thinking_arg(args) is not None:
            kwargs["extra_body"] = {"chat_template_kwargs": {"enable_thinking": thinking_arg(args)}}
        if tools:
            kwargs["tools"] = tools
        for round_no in range(args.max_tool_rounds + 1):
            try:
                stream = client.chat.completions.create(model=args.model, messages=messages, stream=True,
                                                        temperature=args.temperature, top_p=args.top_p, **kwargs)
            except openai.APIError as e:  # not a bug here: the server is down, or says what is wrong with the request
                raise UserError(f"--base_url {args.base_url}: {e}") from None
            print("🤖: ", end="", flush=True)
            answer, calls = read_stream(stream, args.show_thinking, tty)
            if not calls:
                break
            # The round trip: the calls as an assistant message, each result as a `tool` message with its id.
            messages.append({"role": "assistant", "content": answer or None, "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls]})
            if answer:
                print()
            for i, c in enumerate(calls):
                result = call_tool(c["name"], c["arguments"])  # never raises: errors are text for the model
                print(f"{'    ' if i or answer else ''}[tool_call] {c['name']}({c['arguments']})\n"
                      f"    [tool_result] {result}", flush=True)
                messages.append({"role": "tool", "tool_call_id": c["id"], "content": result})
            if round_no == args.max_tool_rounds:
                print(f"(still calling tools after --max_tool_rounds {args.max_tool_rounds}; giving up)", end="")
        print("\n", flush=True)
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


if __name__ == "__main__":
    run_main(main)
