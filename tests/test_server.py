"""scripts/serve_openai_api.py driven over real HTTP (uvicorn in a background thread) with the official `openai`
SDK and raw httpx, plus the batching engine on its own. Tiny random models on CPU; nothing is downloaded."""
import asyncio
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import PromptScriptedLM, ScriptedLM, serve, tiny_model  # noqa: E402
from model.errors import run_main  # noqa: E402
from model.generation import generate  # noqa: E402
from model.reply_stream import ChatStreamParser  # noqa: E402
from scripts.model_loading import chat_prompt  # noqa: E402
from scripts.serve_engine import Engine, Job  # noqa: E402
from scripts.serve_openai_api import create_app  # noqa: E402

KEY = "sk-test"
ERROR_KEYS = {"message", "type", "param", "code"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    # A larger init than the default keeps a random model from repeating one token forever under greedy decoding.
    return tiny_model(0, initializer_range=0.3).eval()


@pytest.fixture(scope="module")
def server(model, tokenizer):
    app = create_app(model, tokenizer, "tiny-minimind", api_key=KEY)
    with serve(app) as url:
        yield SimpleNamespace(url=url, app=app, engine=app.state.server.engine,
                              client=openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0))


def prompt_ids(tokenizer, messages, tools=None):
    return tokenizer(chat_prompt(tokenizer, messages, tools), add_special_tokens=False).input_ids


def parsed_content(tokenizer, ids):
    p = ChatStreamParser()
    return "".join(v for k, v in p.feed(tokenizer.decode(ids, skip_special_tokens=True)) + p.finish()
                   if k == "content")


def reference(model, tokenizer, messages, max_tokens):
    """Greedy generation outside the server -> (prompt ids, generated ids incl. EOS, expected content)."""
    ids = prompt_ids(tokenizer, messages)
    out = generate(model, [ids], max_new_tokens=max_tokens, temperature=0).responses[0].tolist()
    if tokenizer.eos_token_id in out:
        out = out[:out.index(tokenizer.eos_token_id) + 1]
    return ids, out, parsed_content(tokenizer, [t for t in out if t != tokenizer.eos_token_id])


def sse_events(text):
    """Raw SSE body -> list of data payloads (strings); asserts the framing."""
    assert text.endswith("\n\n")
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events[:3]
    return [e[len("data: "):] for e in events]


def wait_for(cond, timeout=10.0):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            return False
        time.sleep(0.02)
    return True


MSGS = [{"role": "system", "content": "You are MiniMind."}, {"role": "user", "content": "你好，介绍一下你自己。"}]


# ------------------------------------------------------------------------------------------------ basics
def test_non_stream_matches_reference_and_counts_usage(server, model, tokenizer):
    ids, out, content = reference(model, tokenizer, MSGS, 20)
    r = server.client.chat.completions.create(model="whatever", messages=MSGS, temperature=0, max_tokens=20)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "whatever"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == content and content
    assert choice.finish_reason == ("stop" if out[-1] == tokenizer.eos_token_id else "length")
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == len(out)
    assert r.usage.total_tokens == len(ids) + len(out)
    # max_completion_tokens is the newer name of max_tokens
    r2 = server.client.chat.completions.create(model="m", messages=MSGS, temperature=0, max_completion_tokens=5)
    assert r2.usage.completion_tokens <= 5 and content.startswith(r2.choices[0].message.content)


def test_stream_joins_to_non_stream_text(server, model, tokenizer):
    ids, out, content = reference(model, tokenizer, MSGS, 24)
    stream = server.client.chat.completions.create(model="m", messages=MSGS, temperature=0, max_tokens=24,
                                                   stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop" if out[-1] == tokenizer.eos_token_id else "length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(out)
    assert chunks[-1].usage.prompt_tokens == len(ids)
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_sse_wire_format(server):
    r = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
                   json={"messages": MSGS, "stream": True, "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    payloads = sse_events(r.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len({(c["id"], c["created"]) for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all("usage" not in c for c in chunks)  # only with stream_options.include_usage
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_models_health_and_unknown_routes(server):
    models = server.client.models.list()
    assert [m.id for m in models.data] == ["tiny-minimind"]
    health = httpx.get(server.url + "/health").json()  # no key needed
    assert health["status"] == "ok" and health["model"] == "tiny-minimind"
    r = httpx.get(server.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and set(r.json()["error"]) == ERROR_KEYS


def test_api_key(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="m", messages=MSGS, max_tokens=2)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {KEY}"}):
        r = httpx.post(server.url + "/v1/chat/completions", json={"messages": MSGS}, headers=headers)
        assert r.status_code == 401 and set(r.json()["error"]) == ERROR_KEYS
    assert httpx.get(server.url + "/v1/models").status_code == 401


@pytest.mark.parametrize("body,status,param", [
    ({}, 422, "messages"),
    ({"messages": "hi"}, 422, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 422, "messages"),
    ({"messages": [{"content": "x"}]}, 422, "messages"),
    ({"messages": MSGS, "temperature": "hot"}, 422, "temperature"),
    ({"messages": MSGS, "stream": {"a": 1}}, 422, "stream"),
    ({"messages": MSGS, "temperature": -1}, 400, "temperature"),
    ({"messages": MSGS, "temperature": 2.5}, 400, "temperature"),
    ({"messages": MSGS, "top_p": 1.5}, 400, "top_p"),
    ({"messages": MSGS, "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": MSGS, "n": 2}, 400, "n"),
    ({"messages": MSGS, "stop": ["a", ""]}, 400, "stop"),
    ({"messages": []}, 400, "messages"),
])
def test_bad_requests_get_openai_errors(server, body, status, param):
    r = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == ERROR_KEYS and err["param"] == param and err["message"]


def test_developer_role_and_content_parts_are_templated_as_plain_messages(server, tokenizer):
    msgs = [{"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "image_url"},
                                              {"type": "text", "text": "brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    r = server.client.chat.completions.create(model="m", messages=msgs, max_tokens=1)
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert r.usage.prompt_tokens == len(prompt_ids(tokenizer, plain))


def test_unparseable_json_is_400_and_sdk_raises(server):
    r = httpx.post(server.url + "/v1/chat/completions", content=b'{"messages": [', headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_invalid"
    with pytest.raises(openai.BadRequestError):
        server.client.chat.completions.create(model="m", messages=MSGS, temperature=-1)


# ------------------------------------------------------------------------------------------------ sampling
def test_stop_strings_and_seeds(server, model, tokenizer):
    ids, out, _ = reference(model, tokenizer, MSGS, 24)
    raw = tokenizer.decode([t for t in out if t != tokenizer.eos_token_id], skip_special_tokens=True)
    stop = raw[len(raw) // 2:len(raw) // 2 + 2]
    cut = raw[:raw.find(stop)]
    p = ChatStreamParser()
    want = "".join(v for k, v in p.feed(cut) + p.finish() if k == "content")
    for stream in (False, True):
        r = server.client.chat.completions.create(model="m", messages=MSGS, temperature=0, max_tokens=24,
                                                  stop=[stop, "never appears"], stream=stream)
        if stream:
            chunks = [c for c in r if c.choices]
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            text, finish = r.choices[0].message.content, r.choices[0].finish_reason
        assert text == want and finish == "stop"
    # a seed makes sampling reproducible; different seeds (almost surely) differ
    texts = [server.client.chat.completions.create(model="m", messages=MSGS, temperature=1.0, top_p=1.0,
                                                   max_tokens=12, seed=s).choices[0].message.content
             for s in (7, 7, 8)]
    assert texts[0] == texts[1] != texts[2]


# ------------------------------------------------------------------------------------------------ concurrency
def test_eight_concurrent_streams_batch_and_match_sequential(server, model, tokenizer):
    prompts = [[{"role": "user", "content": f"问题 {i}: " + "为什么天空是蓝色的？" * (i % 3 + 1)}] for i in range(8)]
    refs = [reference(model, tokenizer, m, 32) for m in prompts]
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)

    async def one(messages):
        t0 = time.perf_counter()
        stream = await client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=32,
                                                      stream=True, stream_options={"include_usage": True})
        text, usage, ids = [], None, set()
        async for c in stream:
            ids.add(c.id)
            if c.choices and c.choices[0].delta.content:
                text.append(c.choices[0].delta.content)
            usage = c.usage or usage
        return "".join(text), usage, ids, time.perf_counter() - t0

    async def main():
        return await asyncio.gather(*(one(m) for m in prompts))

    t0 = time.perf_counter()
    results = asyncio.run(main())
    wall = time.perf_counter() - t0
    ids_all = set()
    for (text, usage, ids, _), (p_ids, out, content) in zip(results, refs):
        assert text == content  # batched decoding gives the sequential answer
        assert usage.completion_tokens == len(out) and usage.prompt_tokens == len(p_ids)
        assert len(ids) == 1
        ids_all |= ids
    assert len(ids_all) == 8
    assert server.engine.stats["max_batch"] >= 2  # requests really were decoded together
    tokens = sum(r[1].completion_tokens for r in results)
    print(f"\n8 concurrent streams: {wall:.2f}s wall, {tokens / wall:.0f} tokens/s total, "
          f"per request {[round(r[1].completion_tokens / r[3]) for r in results]} tokens/s")


def test_disconnected_clients_stop_their_generation(server):
    engine = server.engine
    body = {"messages": MSGS, "max_tokens": 5000, "temperature": 0, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    # streaming: read a few chunks, then hang up
    before = dict(engine.stats)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True},
                      headers=headers, timeout=30) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 4:
                break
    assert wait_for(lambda: engine.stats["cancelled"] == before.get("cancelled", 0) + 1), dict(engine.stats)
    assert wait_for(lambda: engine.active == 0)
    assert engine.stats["tokens"] - before.get("tokens", 0) < 5000  # stopped long before max_tokens
    # non-streaming: the client gives up waiting
    before = dict(engine.stats)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=0.5)
    assert wait_for(lambda: engine.stats["cancelled"] == before.get("cancelled", 0) + 1), dict(engine.stats)
    assert engine.stats["tokens"] - before.get("tokens", 0) < 5000
    assert httpx.get(server.url + "/health").json()["active"] == 0


def test_engine_admits_jobs_mid_batch_exactly(model):
    """Jobs joining a running batch (different prompt lengths, spliced into the shared cache) get exactly the
    tokens they would get alone."""
    prompts = [[1, 5, 77, 300, 12], [1, 900], [1, 44, 45, 46, 47, 48, 49, 50, 51, 52], [1, 2000, 3000]]
    lengths = [12, 20, 8, 15]
    want = [generate(model, [p], max_new_tokens=n, temperature=0).responses[0].tolist()
            for p, n in zip(prompts, lengths)]
    engine = Engine(model, eos_token_id=2, cache_chunk=4)  # grow the shared cache many times along the way
    got, reasons = [[] for _ in prompts], {}

    def job(i):
        def emit(tok, reason):
            if reason is None:
                got[i].append(tok)
            else:
                reasons[i] = reason
        return Job(prompts[i], lengths[i], emit, temperature=0)

    with torch.inference_mode():
        engine.admit([job(0)])
        engine.step()
        engine.step()
        engine.admit([job(1), job(2)])  # a shorter and a longer prompt than the running one
        for _ in range(3):
            engine.step()
        quitter = Job([1] + [7] * 13, 50, lambda tok, reason: reason and reasons.setdefault("quitter", reason))
        engine.admit([job(3), quitter])
        engine.step()
        quitter.cancel.set()  # leaves the batch at the next step; the others go on
        while engine.jobs:
            engine.step()
    for i in range(4):
        assert got[i] == want[i]
        assert reasons[i] == ("stop" if want[i][-1] == 2 else "length")
    assert reasons["quitter"] == "cancelled" and quitter.n_generated == 1
    assert engine.stats["cancelled"] == 1 and engine.stats["max_batch"] == 5 and engine.stats["cache_grows"] >= 1


# ------------------------------------------------------------------------------------------------ tool calls
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
SCRIPT = ('<think>\nThe user wants weather and time.\n</think>\n\n<tool_call>\n{"name": "get_weather", '
          '"arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": '
          '{"tz": "CET"}}\n</tool_call>')
# What the scripted model writes, by what its prompt looks like (PromptScriptedLM picks one per request):
REPLIES = {
    "required": '{"name": "get_time", "arguments": {}}\n</tool_call>',  # after the forced '<tool_call>\n'
    "named": '{"city": "Rome"}}\n</tool_call>',                         # after '..."arguments": '
    "answer": "It is 21 degrees in Paris.",                             # once a tool result is in the prompt
    "calc": '<tool_call>\n{"name": "calculate_math", "arguments": {"expression": "6*7"}}\n</tool_call>',
    "default": SCRIPT,
}


def scripted_reply(tokenizer, ids) -> str:
    prompt = tokenizer.decode([t for t in ids if t != 0])
    if prompt.endswith('"arguments": '):
        return "named"
    if prompt.endswith("<tool_call>\n"):
        return "required"
    if "<tool_response>" in prompt:
        return "answer"
    # the tool list: our compact template writes calculate_math(expression), minimind-3's the JSON schema
    return "calc" if "calculate_math" in prompt else "default"


def scripted_app(tokenizer, **limits):
    names = list(REPLIES)
    lm = PromptScriptedLM([tokenizer(REPLIES[n], add_special_tokens=False).input_ids for n in names],
                          tokenizer.eos_token_id, lambda ids: names.index(scripted_reply(tokenizer, ids)))
    return create_app(lm, tokenizer, "scripted", **limits)


@pytest.fixture(scope="module")
def scripted(tokenizer):
    with serve(scripted_app(tokenizer, max_seq_len=512, max_prompt_tokens=400)) as url:
        yield SimpleNamespace(url=url, client=openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0))


def post(url, body):
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


WEATHER_Q = [{"role": "user", "content": "Weather and time in Paris?"}]
# model/tools.py's calculator, with a schema short enough for the scripted server's 400-token prompts
CALC = {"type": "function", "function": {"name": "calculate_math", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
WANT_CALLS = [("function", "get_weather", {"city": "Paris"}), ("function", "get_time", {"tz": "CET"})]


def test_tool_calls_and_reasoning_non_stream(scripted):
    r = scripted.client.chat.completions.create(model="m", messages=WEATHER_Q, tools=TOOLS, tool_choice="auto")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.model_extra["reasoning_content"] == "The user wants weather and time."
    calls = choice.message.tool_calls
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == WANT_CALLS
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    # without tools in the request the same text is plain content
    r = scripted.client.chat.completions.create(model="m", messages=WEATHER_Q)
    assert r.choices[0].finish_reason == "stop"
    assert '<tool_call>\n{"name": "get_weather"' in r.choices[0].message.content


def test_tool_calls_stream_the_openai_way(scripted):
    """On the wire: per call, a delta with index, id, type and function.name (arguments ""), then deltas with
    argument text under the same index; parallel calls get indexes 0, 1. The SDK's own accumulator
    (ChatCompletionStreamState, what client.chat.completions.stream() uses) rebuilds the non-streamed message."""
    r = post(scripted.url, {"messages": WEATHER_Q, "tools": TOOLS, "stream": True})
    chunks = [json.loads(x) for x in sse_events(r.text)[:-1]]
    deltas = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert all(len(c["choices"][0]["delta"].get("tool_calls", [])) <= 1 for c in chunks)
    assert [set(d) for d in deltas] == [{"index", "id", "type", "function"}, {"index", "function"}] * 2
    assert [d["index"] for d in deltas] == [0, 0, 1, 1]
    assert deltas[0]["type"] == "function" and deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert set(deltas[1]["function"]) == {"arguments"} and json.loads(deltas[1]["function"]["arguments"]) == {
        "city": "Paris"}
    assert deltas[0]["id"].startswith("call_") and deltas[0]["id"] != deltas[2]["id"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    from openai.lib.streaming.chat import ChatCompletionStreamState
    state = ChatCompletionStreamState(input_tools=TOOLS)
    stream = scripted.client.chat.completions.create(model="m", messages=WEATHER_Q, tools=TOOLS, stream=True)
    done = [e for chunk in stream for e in state.handle_chunk(chunk) if e.type == "tool_calls.function.arguments.done"]
    assert [(e.index, e.name, json.loads(e.arguments)) for e in done] == [(i, n, a) for i, (_, n, a) in
                                                                       enumerate(WANT_CALLS)]
    final = state.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls" and not final.message.content
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in final.message.tool_calls] == \
        WANT_CALLS
    assert final.message.model_extra["reasoning_content"] == "The user wants weather and time."


def test_tool_round_trip_through_the_sdk(scripted, tokenizer):
    """The returned message goes back as an assistant message with tool_calls, each result as a `tool` message
    with its tool_call_id; the chat template renders both and the model answers."""
    from model.tools import call_tool
    msgs = [{"role": "user", "content": "What is 6*7?"}]
    tools = [CALC]
    r = scripted.client.chat.completions.create(model="m", messages=msgs, tools=tools)
    msg = r.choices[0].message
    (call,) = msg.tool_calls
    assert call.function.name == "calculate_math" and json.loads(call.function.arguments) == {"expression": "6*7"}
    msgs += [msg.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": call_tool(call.function.name,
                                                                            call.function.arguments)}]
    assert msgs[-1]["content"] == '{"result": "42"}'
    r = scripted.client.chat.completions.create(model="m", messages=msgs, tools=tools)
    assert r.choices[0].message.content == REPLIES["answer"] and r.choices[0].finish_reason == "stop"
    rendered = [msgs[0], {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "calculate_math", "arguments": '{"expression": "6*7"}'}}]},
        {"role": "tool", "content": '{"result": "42"}'}]
    text = chat_prompt(tokenizer, rendered, tools)
    assert '<tool_response>\n{"result": "42"}\n</tool_response>' in text
    assert r.usage.prompt_tokens == len(tokenizer(text, add_special_tokens=False).input_ids)


def test_tool_choice_none_required_and_named(scripted, tokenizer):
    # "none": no tools in the prompt, and the model's call text stays content
    r = scripted.client.chat.completions.create(model="m", messages=WEATHER_Q, tools=TOOLS, tool_choice="none")
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    assert "<tool_call>" in r.choices[0].message.content
    assert r.usage.prompt_tokens == len(prompt_ids(tokenizer, WEATHER_Q))
    # "required": the reply is started as a call, whatever the model would have written
    r = scripted.client.chat.completions.create(model="m", messages=WEATHER_Q, tools=TOOLS, tool_choice="required")
    assert r.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in r.choices[0].message.tool_calls] == [("get_time", "{}")]
    assert r.usage.prompt_tokens == len(prompt_ids(tokenizer, WEATHER_Q, TOOLS)) + 2  # + '<tool_call>', '\n'
    # a named function: only it is offered, and the call is to it
    named = {"type": "function", "function": {"name": "get_weather"}}
    for stream in (False, True):
        r = scripted.client.chat.completions.create(model="m", messages=WEATHER_Q, tools=TOOLS, tool_choice=named,
                                                    stream=stream)
        if stream:
            from openai.lib.streaming.chat import ChatCompletionStreamState
            state = ChatCompletionStreamState()
            for chunk in r:
                state.handle_chunk(chunk)
            r = state.get_final_completion()
        (call,) = r.choices[0].message.tool_calls
        assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Rome"})
        assert r.choices[0].finish_reason == "tool_calls"
    r = scripted.client.chat.completions.create(model="m", messages=WEATHER_Q, tools=TOOLS, tool_choice=named,
                                                max_tokens=1)
    only_weather = len(tokenizer(chat_prompt(tokenizer, WEATHER_Q, TOOLS[:1]) + '<tool_call>\n{"name": '
                                 '"get_weather", "arguments": ', add_special_tokens=False).input_ids)
    assert r.usage.prompt_tokens == only_weather
    # parallel_tool_calls=false: the reply ends after its first call
    r = scripted.client.chat.completions.create(model="m", messages=WEATHER_Q, tools=TOOLS,
                                                parallel_tool_calls=False)
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["get_weather"]
    assert r.choices[0].finish_reason == "tool_calls" and r.usage.completion_tokens < len(
        tokenizer(SCRIPT, add_special_tokens=False).input_ids)


@pytest.mark.parametrize("extra,message", [
    ({"tool_choice": {"type": "function", "function": {"name": "get_stock"}}}, "'get_stock', which is not in tools"),
    ({"tool_choice": {"type": "function"}}, "tool_choice must be"),
    ({"tool_choice": "always"}, "tool_choice must be"),
    ({"tool_choice": "required", "tools": None}, "tool_choice requires tools"),
])
def test_bad_tool_choice_is_a_400_naming_it(scripted, extra, message):
    r = post(scripted.url, {"messages": WEATHER_Q, "tools": TOOLS, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "tool_choice" and message in err["message"], err


def test_thinking_switches_map_to_the_template(scripted, tokenizer):
    """enable_thinking, open_thinking and chat_template_kwargs all reach our template's enable_thinking switch;
    bad or contradictory values are a 400 naming the field."""
    off = len(tokenizer(chat_prompt(tokenizer, WEATHER_Q, enable_thinking=False), add_special_tokens=False).input_ids)
    assert off > len(prompt_ids(tokenizer, WEATHER_Q))  # the empty <think></think> block
    for extra in ({"enable_thinking": False}, {"open_thinking": False},
                  {"chat_template_kwargs": {"enable_thinking": False}}, {"chat_template_kwargs": {"open_thinking": False}}):
        r = scripted.client.chat.completions.create(model="m", messages=WEATHER_Q, max_tokens=1, extra_body=extra)
        assert r.usage.prompt_tokens == off, extra
    for body, param in [({"chat_template_kwargs": {"enable_thinking": "yes"}}, "chat_template_kwargs"),
                        ({"enable_thinking": True, "open_thinking": False}, "enable_thinking"),
                        ({"chat_template_kwargs": {"tools": []}}, "chat_template_kwargs")]:
        r = post(scripted.url, {"messages": WEATHER_Q, **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)


def test_minimind3_tokenizer_open_thinking(tokenizer):
    """Upstream's minimind-3 tokenizer spells the switch open_thinking; a request's enable_thinking opens its
    <think> block, so the model's text up to </think> is reasoning_content. A forced call cannot go there."""
    folder = ROOT.parent / "shared" / "data" / "reference" / "minimind3_tokenizer"
    if not folder.is_dir():
        pytest.skip(f"needs {folder} (upstream's minimind-3 tokenizer, shared data)")
    from transformers import AutoTokenizer
    tok3 = AutoTokenizer.from_pretrained(folder)
    lm = ScriptedLM(tok3("Greet back.\n</think>\n\nHello!", add_special_tokens=False).input_ids, tok3.eos_token_id)
    want = tok3.apply_chat_template(WEATHER_Q, tokenize=False, add_generation_prompt=True, open_thinking=True)
    assert want.endswith("<think>\n")
    with serve(create_app(lm, tok3, "m3", max_seq_len=512)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        for extra in ({"enable_thinking": True}, {"chat_template_kwargs": {"enable_thinking": True}},
                      {"open_thinking": True}):
            r = client.chat.completions.create(model="m", messages=WEATHER_Q, extra_body=extra)
            assert r.usage.prompt_tokens == len(tok3(want, add_special_tokens=False).input_ids)
            assert r.choices[0].message.model_extra["reasoning_content"] == "Greet back."
            assert r.choices[0].message.content == "Hello!"
        r = post(url, {"messages": WEATHER_Q, "tools": TOOLS, "tool_choice": "required", "open_thinking": True})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice" and "<think>" in r.text


def test_tool_history_is_templated_and_long_chats_are_truncated(scripted, tokenizer):
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}]
    r = scripted.client.chat.completions.create(model="m", messages=history, max_tokens=1)
    assert r.usage.prompt_tokens == len(prompt_ids(tokenizer, history))
    # 400-token prompt limit: the oldest turns go, the system prompt and the last question stay
    system = {"role": "system", "content": "Be brief."}
    turns = []
    for i in range(16):
        turns += [{"role": "user", "content": f"Question number {i} about the weather?"},
                  {"role": "assistant", "content": f"Answer number {i}: it is sunny and warm today."}]
    msgs = [system] + turns + [{"role": "user", "content": "And tomorrow?"}]
    assert len(prompt_ids(tokenizer, msgs)) > 400
    raw = scripted.client.chat.completions.with_raw_response.create(model="m", messages=msgs, max_tokens=1)
    dropped = int(raw.headers["x-dropped-messages"])
    kept = [system] + msgs[1 + dropped:]
    assert dropped % 2 == 0 and kept[1]["role"] == "user"
    assert raw.parse().usage.prompt_tokens == len(prompt_ids(tokenizer, kept)) <= 400
    assert len(prompt_ids(tokenizer, [system] + msgs[1 + dropped - 2:])) > 400  # dropped no more than needed
    # the answer gets what is left of the 512-token context, whatever max_tokens asks for
    r = scripted.client.chat.completions.create(model="m", messages=msgs, max_tokens=100_000,
                                                extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens + r.usage.completion_tokens == 512
    # a single message that cannot fit is a 400
    with pytest.raises(openai.BadRequestError) as e:
        scripted.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "天气 " * 500}])
    assert e.value.body["code"] == "context_length_exceeded"


# ------------------------------------------------------------------------------------------------ the client
def test_chat_client_script(server):
    r = server.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}],
                                              temperature=0, max_tokens=8)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "chat_openai_api.py"), "--base_url",
                           server.url + "/v1", "--api_key", KEY, "--temperature", "0", "--max_tokens", "8",
                           "--historys", "2"], input="hello\nhello again\nexit\n", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert r.choices[0].message.content in proc.stdout
    assert proc.stdout.count("🤖: ") == 2
    # a refused request (wrong key) is one `error:` line and exit status 2, not a traceback
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "chat_openai_api.py"), "--base_url",
                           server.url + "/v1", "--api_key", "wrong"], input="hello\n", capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --base_url") and "Incorrect API key" in proc.stderr


def test_chat_client_tool_round_trip(tokenizer, monkeypatch, capsys):
    """--tools: the schemas go with the request, the streamed call is joined from its deltas, run locally with
    model/tools.call_tool, and its result goes back as a `tool` message (the scripted model answers only when a
    <tool_response> is in its prompt)."""
    from scripts import chat_openai_api
    with serve(scripted_app(tokenizer, max_seq_len=2048)) as url:
        monkeypatch.setattr("sys.stdin", io.StringIO("What is 6*7?\nexit\n"))
        chat_openai_api.main(["--base_url", url + "/v1", "--tools", "calculate_math,get_current_time",
                              "--temperature", "0"])
    out = capsys.readouterr().out
    assert ('🤖: [tool_call] calculate_math({"expression": "6*7"})\n    [tool_result] {"result": "42"}\n'
            f'🤖: {REPLIES["answer"]}\n') in out
    with pytest.raises(SystemExit) as e:  # an unknown tool name: one error line
        run_main(chat_openai_api.main, ["--tools", "calculate_math,teleport"])
    assert e.value.code == 2 and "unknown tool(s) 'teleport'" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["ours", "minimind3"])
def test_chat_client_thinking_flag(request, monkeypatch, capsys, which):
    """chat_openai_api.py --thinking 1|0 (aliases --enable_thinking, --open_thinking) goes as chat_template_kwargs,
    which this server accepts and maps to its tokenizer's switch: the prompt the model gets opens <think>
    (minimind-3) or leaves the header plain (ours) when on, and pre-fills the empty block when off. Unset sends
    nothing: the template's default."""
    from helpers import assert_thinking_prompt, prompt_recorder
    from scripts import chat_openai_api
    tok = request.getfixturevalue("tokenizer" if which == "ours" else "mm3")  # mm3 skips without ../shared
    prompts = []
    lm = prompt_recorder(tok, "Greet back.\n</think>\n\nHello!", prompts)
    with serve(create_app(lm, tok, "m", max_seq_len=512)) as url:
        for argv, on in [(["--thinking", "1"], True), (["--thinking", "0"], False), (["--open_thinking", "1"], True),
                         (["--enable_thinking", "0"], False), ([], which == "ours")]:
            monkeypatch.setattr("sys.stdin", io.StringIO("hi\nexit\n"))
            chat_openai_api.main(["--base_url", url + "/v1", "--temperature", "0"] + argv)
            assert_thinking_prompt(prompts[-1], which, on)
            out = capsys.readouterr().out
            if on and which == "minimind3":  # the server reads the text up to </think> as reasoning_content
                assert "[think] Greet back. [/think]" in out and "Hello!" in out
    assert len(prompts) == 5


# ------------------------------------------------------------------------------------------------ other models
def test_non_minimind_model_is_served_one_at_a_time(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=6400,
                                         max_position_embeddings=512, initializer_range=0.3, bos_token_id=1,
                                         eos_token_id=2, pad_token_id=0)).eval()
    app = create_app(llama, tokenizer, "llama")
    msgs = [{"role": "user", "content": "hello"}]
    ids = prompt_ids(tokenizer, msgs)
    want = llama.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)[0, len(ids):].tolist()
    with serve(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        r = client.chat.completions.create(model="m", messages=msgs, temperature=0, max_tokens=10)
    assert not app.state.server.engine.batched
    assert r.usage.completion_tokens == len(want[:want.index(2) + 1] if 2 in want else want)
    assert r.choices[0].message.content == parsed_content(tokenizer, [t for t in want if t != 2])


class BrokenLM(ScriptedLM):
    def forward(self, *args, **kwargs):
        raise RuntimeError("simulated device failure")


def test_engine_failure_is_reported_and_the_server_survives(tokenizer):
    app = create_app(BrokenLM([5], tokenizer.eos_token_id), tokenizer, "broken")
    with serve(app) as url:
        r = httpx.post(url + "/v1/chat/completions", json={"messages": MSGS})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        r = httpx.post(url + "/v1/chat/completions", json={"messages": MSGS, "stream": True})
        payloads = sse_events(r.text)
        assert payloads[-1] == "[DONE]" and "simulated device failure" in json.loads(payloads[-2])["error"]["message"]
        health = httpx.get(url + "/health").json()
        assert health["errors"] == 2 and health["active"] == 0
