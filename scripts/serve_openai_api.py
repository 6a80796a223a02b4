"""An OpenAI-compatible chat server for MiniMind (FastAPI + uvicorn).

    python scripts/serve_openai_api.py --weight full_sft                 # http://127.0.0.1:8998/v1
    python scripts/serve_openai_api.py --load_from ./MiniMind2 --api_key sk-local --host 0.0.0.0

Endpoints
    POST /v1/chat/completions   messages (system/user/assistant with tool_calls/tool), temperature, top_p,
                                max_tokens | max_completion_tokens, stop, stream (+ stream_options.include_usage),
                                tools + tool_choice ("none" | "auto" | "required" | a named function) +
                                parallel_tool_calls, seed; extensions: top_k, repetition_penalty, ignore_eos,
                                enable_thinking | open_thinking | chat_template_kwargs (mapped to the switch
                                the tokenizer's template reads: model/chat_template.py)
    GET  /v1/models             the one model served
    GET  /health                liveness + engine counters (no key needed)
    POST /generate              SGLang's native API, for RL rollouts: input_ids (one list or a list of lists) +
                                sampling_params (max_new_tokens, temperature (0 = greedy), top_p, top_k,
                                repetition_penalty, stop_token_ids, ignore_eos, sampling_seed) + return_logprob
                                -> per prompt {"text", "output_ids" (the stop token included), "meta_info":
                                {"finish_reason": {"type": "stop", "matched": id} | {"type": "length", ...},
                                "prompt_tokens", "completion_tokens", "weight_version", "output_token_logprobs"}}.
                                A seeded or greedy request gives the same tokens whatever else runs beside it.
    POST /update_weights_from_disk   {"model_path", "weight_version"}: the served model loads a .pth state dict
                                (strict, weights_only, as at startup), or a transformers folder when it was
                                started from one (--load_from), between two decode steps; running
                                requests go on with the new weights. -> {"success", "message"}; 400 if it does not
                                fit. An RL trainer calls it after each update (trainer/rl_utils.py HttpRollouts).

Long chats: a prompt over --max_prompt_tokens loses its oldest non-system turns (whole user-to-user turns; the
response header X-Dropped-Messages says how many messages went); if even the last user turn does not fit, 400
(code context_length_exceeded). max_tokens is capped at what is left of --max_seq_len.

Output parsing: `<think>...</think>` goes to `reasoning_content` (as DeepSeek/vLLM servers do) and is removed from
`content`; `<tool_call>{"name", "arguments"}</tool_call>` becomes OpenAI `tool_calls` (finish_reason
"tool_calls"; streamed as OpenAI does: per call a delta with index, id, type and name, then its arguments).
tool_choice "required" or a named function starts the reply with the call's opening (scripts/openai_protocol.py
`tool_plan`), so the call is certain without constrained decoding. Errors are OpenAI-shaped (scripts/openai_protocol.py, with the request schema): 400 for bad values
and over-long prompts, 401 for a wrong/missing key, 404 for unknown routes, 422 for a malformed body.

How requests run: the worker thread of scripts/serve_engine.py owns the model and batches requests continuously
on model/generation.py's BatchDecoder; it hands each token to the request's asyncio.Queue. A client that
disconnects (or whose stop string matched) cancels its job: its row leaves the batch at the next step.
"""
import argparse
import asyncio
import hmac
import json
import os
import sys
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastapi import APIRouter, Depends, FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402

from model.checkpoint import WeightLoadError, load_weights  # noqa: E402
from model.errors import USER_ERRORS, run_main  # noqa: E402
from model.reply_stream import ReplyStream  # noqa: E402
from scripts.model_loading import add_model_args, chat_prompt, load_model  # noqa: E402
from model.chat_template import ChatTemplateArgumentError  # noqa: E402
from scripts.openai_protocol import (EXCEPTION_HANDLERS, APIError, ChatCompletionRequest,  # noqa: E402
                                     GenerateRequest, SamplingParams, UpdateWeightsFromDiskRequest, error_body,
                                     tool_call_deltas, tool_call_message, tool_plan)
from scripts.serve_engine import Engine, Job  # noqa: E402


# ================================================================================================================
# Server state, prompts
# ================================================================================================================
@dataclass
class ServerState:
    """Everything the routes need; one per app (`app.state.server`)."""
    engine: Engine
    tokenizer: Any
    model_name: str
    api_key: Optional[str]
    max_seq_len: int        # context limit: prompt + completion
    max_prompt_tokens: int  # longer chats lose their oldest turns
    temperature: float      # defaults for requests that set none
    top_p: float
    started: int
    weight_version: str = "startup"  # set by /update_weights_from_disk


def server(request: Request) -> ServerState:
    return request.app.state.server


@dataclass
class Prepared:
    """A validated request: its job for the engine, the text path of its reply, the old messages dropped."""
    job: Job
    reply: ReplyStream
    dropped: int
    single_call: bool = False  # parallel_tool_calls=false: the reply ends after its first call


def prepare(s: ServerState, body: ChatCompletionRequest) -> Prepared:
    """Render and tokenize the prompt (dropping old turns to fit), size the answer, build the job."""
    plan = tool_plan(body)
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    system = messages[:1] if messages[0]["role"] == "system" else []
    rest, dropped = messages[len(system):], 0
    if not rest:
        raise APIError(400, "messages must contain a non-system message", "messages", "invalid_value")
    while True:
        try:
            text = chat_prompt(s.tokenizer, system + rest, plan.tools, body.enable_thinking,
                               open_thinking=body.open_thinking, chat_template_kwargs=body.chat_template_kwargs)
        except ChatTemplateArgumentError as e:
            param = next((k for k in ("enable_thinking", "open_thinking") if str(e).startswith(k)),
                         "chat_template_kwargs")
            raise APIError(400, str(e), param, "invalid_value") from None
        ids = s.tokenizer(text + plan.prefill, add_special_tokens=False).input_ids
        if len(ids) <= s.max_prompt_tokens:
            break
        # Drop the oldest turn (everything before the second user message), never the last user message.
        cut = next((i for i, m in enumerate(rest) if m["role"] == "user" and i > 0), None)
        if cut is None:
            raise APIError(400, f"This model's prompt limit is {s.max_prompt_tokens} tokens, but the messages need "
                                f"{len(ids)} tokens even with only the last user turn kept. Shorten the messages.",
                           "messages", "context_length_exceeded")
        dropped, rest = dropped + cut, rest[cut:]
    in_thinking = text.rstrip().endswith("<think>")
    if plan.prefill and in_thinking:  # a call forced inside the reasoning would be read as reasoning
        raise APIError(400, f"tool_choice {json.dumps(body.tool_choice)} cannot force a call when the chat template "
                            f"opens a <think> block for the model (thinking switched on): use tool_choice \"auto\" "
                            f"or switch thinking off", "tool_choice", "invalid_value")
    room = s.max_seq_len - len(ids)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    top_p = s.top_p if body.top_p is None else body.top_p
    job = Job(ids, room if requested is None else min(requested, room), emit=None,
              temperature=s.temperature if body.temperature is None else body.temperature,
              top_p=top_p if top_p > 0 else 1e-9, top_k=body.top_k or 0,
              repetition_penalty=body.repetition_penalty or 1.0, seed=body.seed, ignore_eos=body.ignore_eos)
    reply = ReplyStream(s.tokenizer, body.stop or [], in_thinking=in_thinking, parse_tools=bool(plan.tools),
                        eos_token_id=None if body.ignore_eos else s.engine.eos)
    reply.parser.feed(plan.prefill)  # the forced opening of a call: the parser collects the rest of it
    return Prepared(job, reply, dropped, single_call=body.parallel_tool_calls is False)


async def events(s: ServerState, request: Request, p: Prepared):
    """Run one job; yield ("content"|"reasoning"|"tool_call", value) events, then ("end", reason, n_tokens).

    The finally-block cancels the job whenever this generator stops early: the client disconnected
    (StreamingResponse cancels us, or the disconnect poll below notices), a stop string matched, or the one call
    that parallel_tool_calls=false allows has arrived."""
    loop, q, job, reply = asyncio.get_running_loop(), asyncio.Queue(), p.job, p.reply

    def emit(tok, reason):  # runs in the worker thread
        try:
            loop.call_soon_threadsafe(q.put_nowait, (tok, reason))
        except RuntimeError:  # the event loop is gone (shutdown): stop generating for it
            job.cancel.set()

    job.emit = emit
    s.engine.submit(job)
    n, reason, one_call = 0, None, False
    try:
        while True:
            try:
                tok, reason = await asyncio.wait_for(q.get(), timeout=0.5)
            except asyncio.TimeoutError:  # queued behind other work, or slow: is anyone still listening?
                if await request.is_disconnected():
                    return
                continue
            if reason is not None:
                break
            n += 1
            if n % 16 == 0 and await request.is_disconnected():
                return
            for ev in reply.push(tok):
                yield ev
                one_call = ev[0] == "tool_call" and p.single_call
                if one_call:
                    break
            if reply.stopped or one_call:  # a stop string, or the one call allowed: end here (the
                reason = "stop"             # finally-block stops the job)
                break
        if reason.startswith("error"):
            raise APIError(500, f"generation failed ({reason})", type="server_error", code="engine_error")
        for ev in [] if one_call else reply.finish():
            yield ev
        yield ("end", reason, n)
    finally:
        job.cancel.set()  # no-op when the job already finished


def usage(p: Prepared, n: int) -> dict:
    prompt = len(p.job.prompt_ids)
    return {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# ================================================================================================================
# Routes
# ================================================================================================================
async def check_key(request: Request):
    key = server(request).api_key
    if not key:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise APIError(401, "Incorrect API key provided." if given else
                       "Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key")


router = APIRouter()


@router.get("/health")
async def health(request: Request):
    s = server(request)
    return {"status": "ok", "model": s.model_name, "active": s.engine.active, "queued": s.engine.inbox.qsize(),
            "weight_version": s.weight_version,
            **{k: s.engine.stats[k] for k in ("submitted", "finished", "cancelled", "errors", "tokens", "max_batch",
                                              "weight_updates")}}


@router.get("/v1/models", dependencies=[Depends(check_key)])
async def list_models(request: Request):
    s = server(request)
    return {"object": "list", "data": [{"id": s.model_name, "object": "model", "created": s.started,
                                        "owned_by": "minimind"}]}


@router.post("/v1/chat/completions", dependencies=[Depends(check_key)])
async def chat_completions(body: ChatCompletionRequest, request: Request):
    s = server(request)
    p = prepare(s, body)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.model or s.model_name}
    headers = {"X-Dropped-Messages": str(p.dropped)} if p.dropped else {}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(stream(s, request, p, head, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
    parts, calls, reason, n = {"content": [], "reasoning": []}, [], None, 0
    async for ev in events(s, request, p):
        if ev[0] == "tool_call":
            calls.append(tool_call_message(ev[1], call_id()))
        elif ev[0] == "end":
            reason, n = ev[1], ev[2]
        else:
            parts[ev[0]].append(ev[1])
    if reason is None:  # the client went away; nobody reads this
        return JSONResponse(error_body("client disconnected"), status_code=499)
    message = {"role": "assistant", "content": "".join(parts["content"]) if parts["content"] or not calls else None}
    if parts["reasoning"]:
        message["reasoning_content"] = "".join(parts["reasoning"])
    if calls:
        message["tool_calls"] = calls
    finish = "tool_calls" if calls and reason == "stop" else reason
    return JSONResponse({**head, "object": "chat.completion", "usage": usage(p, n), "choices": [
        {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}, headers=headers)


async def stream(s: ServerState, request: Request, p: Prepared, head: dict, include_usage: bool):
    def chunk(delta=None, finish=None, use=None, choices=True):
        c = {**head, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
             if choices else []}
        if include_usage:
            c["usage"] = use
        return f"data: {json.dumps(c, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    n_calls = 0
    try:
        async for ev in events(s, request, p):
            if ev[0] == "content":
                yield chunk({"content": ev[1]})
            elif ev[0] == "reasoning":
                yield chunk({"reasoning_content": ev[1]})
            elif ev[0] == "tool_call":  # OpenAI's deltas: id, type and name first, then the arguments
                for delta in tool_call_deltas(ev[1], call_id(), n_calls):
                    yield chunk({"tool_calls": [delta]})
                n_calls += 1
            else:
                reason, n = ev[1], ev[2]
                yield chunk({}, "tool_calls" if n_calls and reason == "stop" else reason)
                if include_usage:
                    yield chunk(use=usage(p, n), choices=False)
    except APIError as e:  # the response has started: report in-band, as OpenAI does
        yield f"data: {json.dumps(error_body(e.message, e.type, e.param, e.code))}\n\n"
    yield "data: [DONE]\n\n"


# ================================================================================================================
# SGLang's native API: token ids in and out, weights reloaded from disk (RL rollouts)
# ================================================================================================================
def native_job(s: ServerState, ids: List[int], sp: SamplingParams, logprobs: bool, where: str) -> Job:
    """One prompt of a /generate request -> its Job (400 for what we cannot honour)."""
    bad = sp.unsupported()
    if bad:
        raise APIError(400, f"sampling_params.{bad} is not supported by this server", f"sampling_params.{bad}",
                       "invalid_value")
    vocab = s.engine.model.config.vocab_size
    if not ids or not all(0 <= t < vocab for t in ids):
        raise APIError(400, f"{where}: needs 1 or more token ids in [0, {vocab})", where, "invalid_value")
    room = s.max_seq_len - len(ids)
    if room <= 0 and sp.max_new_tokens > 0:
        raise APIError(400, f"{where}: {len(ids)} tokens leave no room for an answer (context limit "
                            f"{s.max_seq_len}, --max_seq_len)", where, "context_length_exceeded")
    seed = sp.sampling_seed if sp.sampling_seed is not None else sp.seed
    return Job(ids, max(0, min(sp.max_new_tokens, room)), emit=None, temperature=sp.temperature, top_p=sp.top_p,
               top_k=max(sp.top_k, 0), repetition_penalty=sp.repetition_penalty, seed=seed,
               ignore_eos=sp.ignore_eos, stop_token_ids=sp.stop_token_ids or (), logprobs=logprobs)


async def finish_job(s: ServerState, request: Request, job: Job) -> Tuple[List[int], str]:
    """Run one job to its end -> (every sampled token id, finish reason). A client that leaves cancels it."""
    loop, ids = asyncio.get_running_loop(), []
    done = loop.create_future()

    def emit(tok, reason):  # runs in the worker thread
        if reason is None:
            ids.append(tok)
            return
        try:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(reason))
        except RuntimeError:  # the event loop is gone (shutdown)
            job.cancel.set()

    job.emit = emit
    if job.max_new_tokens == 0:
        return ids, "length"
    s.engine.submit(job)
    try:
        while True:
            try:
                reason = await asyncio.wait_for(asyncio.shield(done), timeout=0.5)
                break
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return ids, "cancelled"
    finally:
        job.cancel.set()  # no-op when it finished
    if reason.startswith("error"):
        raise APIError(500, f"generation failed ({reason})", type="server_error", code="engine_error")
    return ids, reason


@router.post("/generate", dependencies=[Depends(check_key)])
async def native_generate(body: GenerateRequest, request: Request):
    s = server(request)
    if body.stream:
        raise APIError(400, "stream is not supported on /generate (ask for whole outputs)", "stream",
                       "invalid_value")
    if (body.input_ids is None) == (body.text is None):
        raise APIError(400, "send exactly one of input_ids and text", "input_ids", "invalid_value")
    single = isinstance(body.text, str) or (body.input_ids is not None and
                                           (not body.input_ids or isinstance(body.input_ids[0], int)))
    if body.input_ids is not None:
        prompts = [list(body.input_ids)] if single else [list(x) for x in body.input_ids]
    else:
        texts = [body.text] if single else list(body.text)
        prompts = [s.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    n = len(prompts)

    def per_prompt(value, default, name):
        if isinstance(value, list):
            if len(value) != n:
                raise APIError(400, f"{name}: {len(value)} entries for {n} prompts", name, "invalid_value")
            return value
        return [default if value is None else value] * n

    params = per_prompt(body.sampling_params, SamplingParams(), "sampling_params")
    want_lp = per_prompt(body.return_logprob, False, "return_logprob")
    jobs = [native_job(s, ids, sp, lp, f"input_ids[{i}]" if not single else "input_ids")
            for i, (ids, sp, lp) in enumerate(zip(prompts, params, want_lp))]
    version = s.weight_version
    results = await asyncio.gather(*(finish_job(s, request, job) for job in jobs))
    out = []
    for job, sp, lp, (ids, reason) in zip(jobs, params, want_lp, results):
        if reason == "stop":
            finish = {"type": "stop", "matched": ids[-1]}
        elif reason == "length":
            finish = {"type": "length", "length": len(ids)}
        else:
            finish = {"type": "abort", "message": reason}
        meta = {"id": uuid.uuid4().hex, "finish_reason": finish, "prompt_tokens": len(job.prompt_ids),
                "completion_tokens": len(ids), "cached_tokens": 0, "weight_version": version}
        if lp:
            meta["output_token_logprobs"] = [[p, t, None] for p, t in zip(job.token_logprobs, ids)]
        out.append({"text": s.tokenizer.decode(ids, skip_special_tokens=sp.skip_special_tokens), "output_ids": ids,
                    "meta_info": meta})
    return JSONResponse(out[0] if single else out)


def load_served_weights(model, path: str):
    """model_path -> the served model's weights, in place, strict: a .pth state dict (a native MiniMind, loaded as
    at startup: weights_only), or a transformers folder (what SGLang reloads) for a model served from one
    (--load_from, e.g. a Llama / Qwen3 export), read with from_pretrained (no remote code)."""
    folder = Path(path)
    if not folder.is_dir():
        return load_weights(model, folder, "model_path")
    from transformers import AutoModelForCausalLM
    try:
        new = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=next(model.parameters()).dtype)
        model.load_state_dict(new.state_dict(), strict=True)
    except (OSError, ValueError, RuntimeError) as e:  # not a model folder, another architecture, other shapes
        raise WeightLoadError(f"model_path {folder}: cannot load it into the served "
                              f"{type(model).__name__}: {str(e).splitlines()[0][:300]}") from None
    return model


@router.post("/update_weights_from_disk", dependencies=[Depends(check_key)])
async def update_weights_from_disk(body: UpdateWeightsFromDiskRequest, request: Request):
    """Load a .pth state dict into the served model, in the engine's worker thread between two decode steps."""
    s = server(request)
    model = s.engine.model

    def load():
        with torch.no_grad():
            load_served_weights(model, body.model_path)

    try:
        await asyncio.wrap_future(s.engine.run_between_steps(load))
    except USER_ERRORS as e:  # missing file, or weights that do not fit the served model
        return JSONResponse({"success": False, "message": str(e)}, status_code=400)
    s.engine.stats["weight_updates"] += 1
    s.weight_version = body.weight_version or str(s.engine.stats["weight_updates"])
    return JSONResponse({"success": True, "message": f"loaded {body.model_path}", "num_paused_requests": 0})


# ================================================================================================================
# The app
# ================================================================================================================
@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.server.engine.start()
    yield
    app.state.server.engine.stop()


def create_app(model, tokenizer, model_name: str = "minimind", api_key: Optional[str] = None,
               max_seq_len: int = 8192, max_prompt_tokens: Optional[int] = None, max_batch_size: int = 8,
               default_temperature: float = 0.85, default_top_p: float = 0.85) -> FastAPI:
    """The FastAPI app serving `model`. Starts its engine thread on startup, stops it on shutdown.

    max_seq_len:        context limit (prompt + completion), capped at the model's max_position_embeddings
    max_prompt_tokens:  longest prompt; longer chats lose their oldest non-system turns (default: max_seq_len
                        minus a reserve of min(1024, max_seq_len // 4) tokens for the answer)
    app.state.server.engine.stats counts submitted / finished / cancelled jobs and generated tokens (also on /health).
    """
    max_seq_len = min(max_seq_len, getattr(model.config, "max_position_embeddings", max_seq_len))
    if max_prompt_tokens is None:
        max_prompt_tokens = max_seq_len - min(1024, max_seq_len // 4)
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id or 0, max_batch_size)
    app = FastAPI(title="MiniMind OpenAI-compatible API", lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    app.state.server = ServerState(engine, tokenizer, model_name, api_key, max_seq_len,
                                   min(max_prompt_tokens, max_seq_len - 1), default_temperature, default_top_p,
                                   int(time.time()))
    app.include_router(router)
    return app


def main():
    parser = argparse.ArgumentParser(description="OpenAI-compatible API server for MiniMind")
    add_model_args(parser)
    parser.add_argument("--host", type=str, default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8998)
    parser.add_argument("--api_key", type=str, default=os.environ.get("MINIMIND_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: env MINIMIND_API_KEY; none = open)")
    parser.add_argument("--max_seq_len", type=int, default=8192, help="context limit: prompt + completion tokens")
    parser.add_argument("--max_prompt_tokens", type=int, default=None,
                        help="longest prompt; older turns are dropped to fit (default: max_seq_len - reserve)")
    parser.add_argument("--max_batch_size", type=int, default=8, help="requests decoded together")
    parser.add_argument("--temperature", type=float, default=0.85, help="default when a request sets none")
    parser.add_argument("--top_p", type=float, default=0.85, help="default when a request sets none")
    args = parser.parse_args()
    model, tokenizer, name = load_model(args)
    app = create_app(model, tokenizer, name, args.api_key, args.max_seq_len, args.max_prompt_tokens,
                     args.max_batch_size, args.temperature, args.top_p)
    import uvicorn
    print(f"serving {name} at http://{args.host}:{args.port}/v1 (API key {'required' if args.api_key else 'off'})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    run_main(main)
