"""Chat with a running MiniMind server (scripts/serve_openai_api.py) through the official `openai` SDK.

    python scripts/serve_openai_api.py --weight full_sft &
    python scripts/chat_openai_api.py --historys 4
    python scripts/chat_openai_api.py --base_url http://host:8998/v1 --api_key sk-local

Reads prompts from stdin until EOF or `exit`, streams each answer; a reasoning model's reasoning_content is
shown dimmed (or between [think] markers when stdout is not a terminal). Any OpenAI-compatible server works.
A server that cannot be reached or refuses the request (wrong key, bad value) ends it with one `error:` line.
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

from model.errors import UserError, run_main  # noqa: E402


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
    parser.add_argument("--show_thinking", type=int, default=1, choices=[0, 1])
    args = parser.parse_args(argv)
    if args.historys < 0 or args.historys % 2:
        parser.error(f"--historys must be an even number >= 0, got {args.historys}")

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
        try:
            stream = client.chat.completions.create(model=args.model, messages=messages, stream=True,
                                                    temperature=args.temperature, top_p=args.top_p, **kwargs)
        except openai.APIError as e:  # not a bug here: the server is down, or says what is wrong with the request
            raise UserError(f"--base_url {args.base_url}: {e}") from None
        print("🤖: ", end="", flush=True)
        answer, thinking = [], False
        for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            # reasoning_content is not part of the OpenAI schema: the SDK keeps unknown fields in model_extra.
            reasoning = (delta.model_extra or {}).get("reasoning_content")
            if reasoning and args.show_thinking:
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
            for call in delta.tool_calls or []:
                print(f"[tool_call] {call.function.name}({call.function.arguments})", end="", flush=True)
        if thinking:
            print("\033[0m" if tty else " [/think]", end="")
        print("\n", flush=True)
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": "".join(answer)}]


if __name__ == "__main__":
    run_main(main)
