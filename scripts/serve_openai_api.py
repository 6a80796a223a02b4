"""An OpenAI-compatible chat server for MiniMind (FastAPI + uvicorn).

    python scripts/serve_openai_api.py --weight full_sft                 # http://127.0.0.1:8998/v1
    python scripts/serve_openai_api.py --load_from ./MiniMind2 --api_key sk-local --host 0.0.0.0

Endpoints
    POST /v1/chat/completions   messages (system/user/assistant with tool_calls/tool), temperature, top_p,
                                max_tokens | max_completion_tokens, stop, stream (+ stream_options.include_usage),
                                tools (+ tool_choice), seed; extensions: top_k, repetition_penalty, ignore_eos,
                                enable_thinking (or chat_template_kwargs.enable_thinking)
    GET  /v1/models             the one model served
    GET  /health                liveness + engine counters (no key needed)

Long chats: a prompt over --max_prompt_tokens loses its oldest non-system turns (whole user-to-user turns; the
response header X-Dropped-Messages says how many messages went); if even the last user turn does not fit, 400
(code context_length_exceeded). max_tokens is capped at what is left of --max_seq_len.

Output parsing: `<think>...</think>` goes to `reasoning_content` (as DeepSeek/vLLM servers do) and is removed from
`content`; `<tool_call>{"name", "arguments"}</tool_call>` becomes OpenAI `tool_calls` (finish_reason
"tool_calls"). Errors are OpenAI-shaped: {"error": {"message", "type", "param", "code"}}, with 400 for bad values
and over-long prompts, 401 for a wrong/missing key, 404 for unknown routes, 422 for a malformed body.

How requests run: one worker thread owns the model and runs a small continuous batcher — requests that arrive
while others are generating join the running batch at the next step (their prompt is prefilled and spliced into
the shared KV cache), finished or cancelled ones leave it. The event loop never runs the model: the worker hands
each token to the request's asyncio.Queue with loop.call_soon_threadsafe. A client that disconnects (or whose
stop string matched) sets its job's cancel flag and the worker drops its row at the next step. Models that are
not MiniMind (e.g. a Llama export loaded with --load_from) are served one request at a time.
"""
import argparse
import asyncio
import hmac
import json
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable, List, Literal, Optional, Union

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastapi import Depends, FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from model.generation import left_pad, process_logits  # noqa: E402
from model.model_minimind import StaticKVCache  # noqa: E402
from scripts.model_loading import (ChatStreamParser, IncrementalDecoder, add_model_args, chat_prompt,  # noqa: E402
                                   cli_errors, is_minimind, load_model, stream_tokens)


# ================================================================================================================
# The generation engine (worker thread)
# ================================================================================================================
class Job:
    """One request's generation. `emit(token, None)` per token, then `emit(None, reason)` once, where reason is
    'stop' (EOS), 'length' (max_new_tokens), 'cancelled' or 'error: ...'. Called from the worker thread."""

    def __init__(self, prompt_ids: List[int], max_new_tokens: int, emit: Callable, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0, seed: Optional[int] = None,
                 ignore_eos: bool = False):
        self.prompt_ids = list(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.emit = emit
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.repetition_penalty = repetition_penalty
        self.seed, self.ignore_eos = seed, ignore_eos
        self.cancel = threading.Event()
        self.generator = None
        self.seen = None  # prompt + generated ids, for the repetition penalty
        self.n_generated = 0


class Engine:
    """Owns the model; runs jobs in one worker thread, batching those that overlap in time.

    Batch state between steps (B rows, in `self.jobs` order):
        cache   StaticKVCache (B, kv_heads, capacity, head_dim); columns [0, cache.seen) are used
        mask    (B, cache.seen) 1 = a real token in that column (rows are left-padded to a common right edge)
        pos     (B, 1) the position id of each row's next token (real tokens only, so padding shifts nothing)
        logits  (B, vocab) each row's next-token logits
    A step samples one token per row, drops finished rows, and runs one batched forward. New jobs are
    prefilled together and spliced in before a step: both groups are right-aligned to the wider one.
    `admit()` and `step()` are also callable directly (no thread) for deterministic tests.
    """
    CACHE_CHUNK = 256  # KV-cache columns allocated ahead of need (then grown with the cache, amortised doubling)

    def __init__(self, model, eos_token_id: int, pad_token_id: int = 0, max_batch_size: int = 8):
        self.model = model
        self.eos, self.pad = eos_token_id, pad_token_id
        self.max_batch_size = max(1, max_batch_size)
        self.config = model.config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.batched = is_minimind(model)  # other architectures: one job at a time through their own cache
        self.inbox: "queue.Queue[Optional[Job]]" = queue.Queue()
        self.jobs: List[Job] = []
        self.cache = self.mask = self.pos = self.logits = None
        self.stats = Counter()  # submitted, finished, cancelled, errors, tokens, steps, max_batch, cache_grows
        self.thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ thread
    def start(self):
        if self.thread is None:
            self._stop.clear()
            self.thread = threading.Thread(target=self._run, name="minimind-engine", daemon=True)
            self.thread.start()

    def stop(self):
        if self.thread is not None:
            self._stop.set()
            self.inbox.put(None)
            self.thread.join(timeout=10)
            self.thread = None

    def submit(self, job: Job):
        self.stats["submitted"] += 1
        self.inbox.put(job)

    @property
    def active(self) -> int:
        return len(self.jobs)

    def _take(self, block: bool) -> List[Job]:
        """New jobs from the inbox: wait for one when idle, then take whatever else is already there."""
        room = self.max_batch_size - len(self.jobs) if self.batched else (0 if self.jobs else 1)
        new = []
        while len(new) < room:
            try:
                job = self.inbox.get(block=block and not new, timeout=0.1 if block and not new else None)
            except queue.Empty:
                break
            if job is None:  # stop() sentinel
                break
            if job.cancel.is_set():  # its client left while it waited
                self._finish(job, "cancelled")
                continue
            new.append(job)
        return new

    def _run(self):
        with torch.inference_mode():
            while not self._stop.is_set():
                try:
                    new = self._take(block=not self.jobs)
                    if not self.batched:
                        for job in new:
                            self._run_single(job)
                        continue
                    if new:
                        self.admit(new)
                    if self.jobs:
                        self.step()
                except Exception as e:  # a bug or OOM: fail the running jobs, keep serving
                    self._fail_all(e)

    def _fail_all(self, e: Exception):
        traceback.print_exc()
        self.stats["errors"] += 1
        for job in self.jobs:
            job.emit(None, f"error: {type(e).__name__}: {e}")
        self.jobs = []
        self.cache = self.mask = self.pos = self.logits = None

    def _finish(self, job: Job, reason: str):
        self.stats["cancelled" if reason == "cancelled" else "finished"] += 1
        job.emit(None, reason)

    # ------------------------------------------------------------------ batched decoding (MiniMind)
    def _sample(self, rows: List[int]) -> List[int]:
        """Next token of each of `rows`. Rows with the same settings are sampled together (one call for all the
        greedy rows, one per distinct temperature/top-p/top-k); a seeded row or one with a repetition penalty
        has its own generator / history, so it is sampled alone."""
        logits = self.logits[rows]
        no_eos = [k for k, i in enumerate(rows) if self.jobs[i].ignore_eos]
        if no_eos:
            logits = logits.clone()
            logits[no_eos, self.eos] = float("-inf")
        groups = {}
        for k, i in enumerate(rows):
            job = self.jobs[i]
            alone = job.generator is not None or job.seen is not None
            key = ("row", k) if alone else ("greedy",) if job.temperature == 0 else (
                job.temperature, job.top_p, job.top_k)
            groups.setdefault(key, []).append(k)
        out = torch.empty(len(rows), dtype=torch.long, device=self.device)
        for key, ks in groups.items():
            job = self.jobs[rows[ks[0]]]
            if key == ("greedy",):  # top-p / top-k filtering never changes the argmax
                out[ks] = logits[ks].argmax(-1)
                continue
            filtered = process_logits(logits[ks], job.temperature, job.top_p, job.top_k, job.repetition_penalty,
                                      job.seen)
            if job.temperature > 0:
                out[ks] = torch.multinomial(filtered.softmax(-1), 1, generator=job.generator).view(-1)
            else:
                out[ks] = filtered.argmax(-1)
        return out.tolist()  # one host sync for the whole batch

    def _new_cache(self, rows: int, capacity: int) -> StaticKVCache:
        return StaticKVCache(self.config, rows, capacity, device=self.device, dtype=self.dtype)

    def _room(self, width: int) -> int:
        """Cache columns to allocate beyond `width`: what the rows may still need, but at most a chunk that grows
        with the cache (amortised doubling), so a request without max_tokens does not reserve the whole context."""
        need = max(j.max_new_tokens - j.n_generated for j in self.jobs)
        return max(1, min(need, max(self.CACHE_CHUNK, width)))

    def _grow(self):
        """Reallocate the full cache with more columns (the used ones copied)."""
        seen = self.cache.seen
        bigger = self._new_cache(len(self.jobs), seen + self._room(seen))
        for layer in range(len(bigger.k)):
            bigger.k[layer][:, :, :seen] = self.cache.k[layer][:, :, :seen]
            bigger.v[layer][:, :, :seen] = self.cache.v[layer][:, :, :seen]
        bigger.seen = seen
        self.cache = bigger
        self.stats["cache_grows"] += 1

    def admit(self, new: List[Job]):
        """Prefill the new jobs' prompts (one left-padded batch) and add them to the running batch."""
        for job in new:
            if job.seed is not None:
                job.generator = torch.Generator(self.device).manual_seed(job.seed)
            if job.repetition_penalty != 1.0:
                job.seen = torch.tensor([job.prompt_ids], device=self.device)
        ids, mask = left_pad([j.prompt_ids for j in new], self.pad, self.device)
        width = ids.shape[1]
        old_width = self.cache.seen if self.jobs else 0
        right = max(width, old_width)  # the common right edge after the splice
        # Positions are per row (real tokens only), so the cache may be wider than the context limit: a short
        # prompt right-aligned next to a long one just has more padding columns in front of it.
        direct = not self.jobs  # nothing running: prefill straight into the full-size cache
        self.jobs = self.jobs + list(new)
        capacity = right + self._room(right)
        cache = self._new_cache(len(new), capacity if direct else width)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        padded = any(len(j.prompt_ids) < width for j in new)
        out = self.model(input_ids=ids, attention_mask=mask if padded else None, position_ids=positions,
                         cache=cache, use_cache=True, logits_to_keep=1)
        logits, pos = out.logits[:, -1].float(), positions[:, -1:] + 1
        if direct:
            self.cache, self.mask, self.pos, self.logits = cache, mask, pos, logits
        else:
            merged = self._new_cache(len(self.jobs), capacity)
            b = len(self.jobs) - len(new)
            for layer in range(len(merged.k)):
                for dst, src in ((merged.k[layer], (self.cache.k[layer], cache.k[layer])),
                                 (merged.v[layer], (self.cache.v[layer], cache.v[layer]))):
                    dst[:b, :, right - old_width:right] = src[0][:, :, :old_width]
                    dst[b:, :, right - width:right] = src[1][:, :, :width]
            merged.seen = right
            self.mask = torch.cat([F.pad(self.mask, (right - old_width, 0)), F.pad(mask, (right - width, 0))])
            self.cache = merged
            self.pos = torch.cat([self.pos, pos])
            self.logits = torch.cat([self.logits, logits])
        self.stats["max_batch"] = max(self.stats["max_batch"], len(self.jobs))

    def step(self):
        """Sample one token for every row, report it, drop finished rows, run the next forward."""
        keep = []
        for i, job in enumerate(self.jobs):
            if job.cancel.is_set():
                self._finish(job, "cancelled")
            else:
                keep.append(i)
        values = self._sample(keep) if keep else []
        still = []
        for i, t in zip(keep, values):
            job = self.jobs[i]
            job.n_generated += 1
            self.stats["tokens"] += 1
            job.emit(t, None)
            if t == self.eos and not job.ignore_eos:
                self._finish(job, "stop")
            elif job.n_generated >= job.max_new_tokens:
                self._finish(job, "length")
            else:
                if job.seen is not None:
                    job.seen = torch.cat([job.seen, torch.tensor([[t]], device=self.device)], 1)
                still.append((i, t))
        self.stats["steps"] += 1
        if not still:
            self.jobs, self.cache = [], None
            self.mask = self.pos = self.logits = None
            return
        rows = [i for i, _ in still]
        if len(rows) < len(self.jobs):
            idx = torch.tensor(rows, device=self.device)
            self.cache.reorder(idx)
            self.mask, self.pos = self.mask[idx], self.pos[idx]
            self.jobs = [self.jobs[i] for i in rows]
        if self.cache.seen + 1 > self.cache.max_len:
            self._grow()
        tok = torch.tensor([[t] for _, t in still], device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(rows), 1)], 1)
        padded = not bool(self.mask.all())  # padding columns (from prefill or a splice) must stay masked
        out = self.model(input_ids=tok, attention_mask=self.mask if padded else None, position_ids=self.pos,
                         cache=self.cache, use_cache=True)
        self.logits = out.logits[:, -1].float()
        self.pos = self.pos + 1

    # ------------------------------------------------------------------ one at a time (other architectures)
    def _run_single(self, job: Job):
        generator = torch.Generator(self.device).manual_seed(job.seed) if job.seed is not None else None
        t = None
        try:
            for t in stream_tokens(self.model, job.prompt_ids, job.max_new_tokens, job.temperature, job.top_p,
                                   job.top_k, job.repetition_penalty, self.eos, self.pad, generator):
                if job.cancel.is_set():
                    return self._finish(job, "cancelled")
                job.n_generated += 1
                self.stats["tokens"] += 1
                job.emit(t, None)
            self._finish(job, "stop" if t == self.eos else "length")
        except Exception as e:
            traceback.print_exc()
            self.stats["errors"] += 1
            job.emit(None, f"error: {type(e).__name__}: {e}")


# ================================================================================================================
# Request / response schema
# ================================================================================================================
class FunctionCall(BaseModel):
    name: str
    arguments: Union[str, dict] = "{}"


class ToolCall(BaseModel):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: Optional[str] = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, List[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[List[ToolCall]] = None
    tool_call_id: Optional[str] = None
    reasoning_content: Optional[str] = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    description: Optional[str] = None
    parameters: Optional[dict] = None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: ToolFunction


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use (user, metadata, ...)
    model: Optional[str] = None
    messages: List[Message]
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    stop: Union[str, List[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    tools: Optional[List[Tool]] = None
    tool_choice: Union[str, dict, None] = None
    seed: Optional[int] = None
    n: Optional[int] = None
    # extensions (vLLM-style)
    top_k: Optional[int] = None
    repetition_penalty: Optional[float] = None
    ignore_eos: bool = False
    enable_thinking: Optional[bool] = None
    chat_template_kwargs: Optional[dict] = None


class APIError(Exception):
    """An error for the client: rendered as OpenAI's {"error": {...}} with `status`."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_body(message: str, type: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ================================================================================================================
# Helpers: messages, stop strings
# ================================================================================================================
def template_messages(messages: List[Message]) -> List[dict]:
    """Pydantic messages -> plain dicts for the chat template (text parts joined, developer -> system)."""
    out = []
    for m in messages:
        content = m.content
        if isinstance(content, list):
            content = "".join(p.text or "" for p in content if p.type in ("text", "input_text"))
        d = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
        if m.tool_calls:
            d["tool_calls"] = [{"id": c.id, "type": "function",
                                "function": {"name": c.function.name,
                                             "arguments": c.function.arguments if isinstance(c.function.arguments, str)
                                             else json.dumps(c.function.arguments, ensure_ascii=False)}}
                               for c in m.tool_calls]
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        if m.role == "assistant" and m.reasoning_content:
            d["reasoning_content"] = m.reasoning_content
        out.append(d)
    return out


class StopMatcher:
    """OpenAI `stop` strings over streamed text: returns the text that is safe to show and whether a stop string
    appeared (text from it on is discarded). A possible start of a stop string is held back until decided."""

    def __init__(self, stops: List[str]):
        self.stops = [s for s in stops if s]
        self.buf = ""

    def feed(self, text: str):
        if not self.stops:
            return text, False
        self.buf += text
        hits = [self.buf.find(s) for s in self.stops if s in self.buf]
        if hits:
            out, self.buf = self.buf[:min(hits)], ""
            return out, True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.buf)), keep, -1):
                if self.buf.endswith(s[:n]):
                    keep = n
                    break
        out, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


# ================================================================================================================
# The app
# ================================================================================================================
def create_app(model, tokenizer, model_name: str = "minimind", api_key: Optional[str] = None,
               max_seq_len: int = 8192, max_prompt_tokens: Optional[int] = None, max_batch_size: int = 8,
               default_temperature: float = 0.85, default_top_p: float = 0.85) -> FastAPI:
    """The FastAPI app serving `model`. Starts its engine thread on startup, stops it on shutdown.

    max_seq_len:        context limit (prompt + completion), capped at the model's max_position_embeddings
    max_prompt_tokens:  longest prompt; longer chats lose their oldest non-system turns (default: max_seq_len
                        minus a reserve of min(1024, max_seq_len // 4) tokens for the answer)
    app.state.engine.stats counts submitted / finished / cancelled jobs and generated tokens (also on /health).
    """
    max_seq_len = min(max_seq_len, getattr(model.config, "max_position_embeddings", max_seq_len))
    if max_prompt_tokens is None:
        max_prompt_tokens = max_seq_len - min(1024, max_seq_len // 4)
    max_prompt_tokens = min(max_prompt_tokens, max_seq_len - 1)
    eos = tokenizer.eos_token_id
    engine = Engine(model, eos, tokenizer.pad_token_id or 0, max_batch_size)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="MiniMind OpenAI-compatible API", lifespan=lifespan)
    app.state.engine = engine
    app.state.model_name = model_name

    # ---------------------------------------------------------------- errors, OpenAI-shaped
    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(error_body("We could not parse the JSON body of your request.", code="json_invalid"),
                                status_code=400)
        parts, param = [], None
        for e in errors:
            loc = [str(x) for x in e.get("loc", ()) if x != "body"]
            param = param or (loc[0] if loc else None)
            parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg')}")
        return JSONResponse(error_body("Invalid request: " + "; ".join(parts[:5]), param=param,
                                       code="invalid_request_body"), status_code=422)

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):  # a bug: still answer in OpenAI's shape
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                            status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            msg = f"Unknown request URL: {request.method} {request.url.path}."
            return JSONResponse(error_body(msg, code="unknown_url"), status_code=404)
        return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    # ---------------------------------------------------------------- auth
    async def check_key(request: Request):
        if not api_key:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided." if given else
                           "Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key")

    # ---------------------------------------------------------------- routes
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "active": engine.active, "queued": engine.inbox.qsize(),
                **{k: engine.stats[k] for k in ("submitted", "finished", "cancelled", "errors", "tokens",
                                                 "max_batch")}}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": started,
                                            "owned_by": "minimind"}]}

    def prepare(body: ChatCompletionRequest) -> dict:
        """Check values (400), render and tokenize the prompt (dropping old turns to fit), size the answer."""
        temperature = default_temperature if body.temperature is None else body.temperature
        top_p = default_top_p if body.top_p is None else body.top_p
        if not 0 <= temperature <= 2:
            raise APIError(400, f"temperature must be between 0 and 2, got {temperature}", "temperature",
                           "invalid_value")
        if not 0 <= top_p <= 1:
            raise APIError(400, f"top_p must be between 0 and 1, got {top_p}", "top_p", "invalid_value")
        if body.top_k is not None and body.top_k < 0:
            raise APIError(400, f"top_k must be >= 0, got {body.top_k}", "top_k", "invalid_value")
        if body.repetition_penalty is not None and body.repetition_penalty <= 0:
            raise APIError(400, "repetition_penalty must be > 0", "repetition_penalty", "invalid_value")
        if body.n not in (None, 1):
            raise APIError(400, "only n=1 is supported", "n", "invalid_value")
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if requested is not None and requested < 1:
            raise APIError(400, f"max_tokens must be at least 1, got {requested}", "max_tokens", "invalid_value")
        if not body.messages:
            raise APIError(400, "messages must contain at least one message", "messages", "invalid_value")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(400, "stop must be up to 4 non-empty strings", "stop", "invalid_value")
        tools = None
        if body.tools and body.tool_choice != "none":
            tools = [t.model_dump(exclude_none=True) for t in body.tools]
        thinking = body.enable_thinking
        if thinking is None and body.chat_template_kwargs:
            thinking = body.chat_template_kwargs.get("enable_thinking")

        messages = template_messages(body.messages)
        system = messages[:1] if messages[0]["role"] == "system" else []
        rest = messages[len(system):]
        if not rest:
            raise APIError(400, "messages must contain a non-system message", "messages", "invalid_value")
        dropped = 0
        while True:
            text = chat_prompt(tokenizer, system + rest, tools, thinking)
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if len(ids) <= max_prompt_tokens:
                break
            # Drop the oldest turn (everything before the second user message), never the last user message.
            users = [i for i, m in enumerate(rest) if m["role"] == "user"]
            cut = next((i for i in users if i > 0), None)
            if cut is None:
                raise APIError(400, f"This model's prompt limit is {max_prompt_tokens} tokens, but the messages "
                                    f"need {len(ids)} tokens even with only the last user turn kept. Shorten "
                                    f"the messages.", "messages", "context_length_exceeded")
            dropped += cut
            rest = rest[cut:]
        room = max_seq_len - len(ids)
        max_new = room if requested is None else min(requested, room)
        return dict(ids=ids, max_new=max_new, temperature=temperature, top_p=top_p if top_p > 0 else 1e-9,
                    top_k=body.top_k or 0, repetition_penalty=body.repetition_penalty or 1.0, stops=stops,
                    dropped=dropped, in_thinking=text.rstrip().endswith("<think>"), parse_tools=bool(tools))

    async def events(request: Request, body: ChatCompletionRequest, p: dict):
        """Run one job; yield ("content"|"reasoning"|"tool_call", value) events, then ("end", reason, n_tokens).

        The finally-block cancels the job whenever this generator stops early: the client disconnected
        (StreamingResponse cancels us, or the disconnect poll below notices), or a stop string matched."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def emit(tok, reason):  # runs in the worker thread
            try:
                loop.call_soon_threadsafe(q.put_nowait, (tok, reason))
            except RuntimeError:  # the event loop is gone (shutdown): stop generating for it
                job.cancel.set()

        job = Job(p["ids"], p["max_new"], emit, p["temperature"], p["top_p"], p["top_k"], p["repetition_penalty"],
                  body.seed, body.ignore_eos)
        decoder = IncrementalDecoder(tokenizer)
        stopper = StopMatcher(p["stops"])
        parser = ChatStreamParser(in_thinking=p["in_thinking"], parse_tools=p["parse_tools"])
        engine.submit(job)
        n, reason, stopped = 0, None, False
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
                if tok == eos and not body.ignore_eos:
                    continue
                text, hit = stopper.feed(decoder.push(tok))
                for ev in parser.feed(text):
                    yield ev
                if hit:  # a stop string: end here (the finally-block stops the job)
                    reason, stopped = "stop", True
                    break
            if reason.startswith("error"):
                raise APIError(500, f"generation failed ({reason})", type="server_error", code="engine_error")
            if not stopped:  # release what the decoder and the stop matcher held back
                text, hit = stopper.feed(decoder.flush())
                for ev in parser.feed(text if hit else text + stopper.flush()):
                    yield ev
            for ev in parser.finish():
                yield ev
            yield ("end", reason, n)
        finally:
            job.cancel.set()  # no-op when the job already finished

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        p = prepare(body)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        name = body.model or model_name
        headers = {"X-Dropped-Messages": str(p["dropped"])} if p["dropped"] else {}
        if body.stream:
            return StreamingResponse(stream(request, body, p, cid, created, name), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
        content, reasoning, calls, reason, n = [], [], [], None, 0
        async for ev in events(request, body, p):
            if ev[0] == "content":
                content.append(ev[1])
            elif ev[0] == "reasoning":
                reasoning.append(ev[1])
            elif ev[0] == "tool_call":
                calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": ev[1]})
            else:
                reason, n = ev[1], ev[2]
        if reason is None:  # the client went away; nobody reads this
            return JSONResponse(error_body("client disconnected"), status_code=499)
        message = {"role": "assistant", "content": "".join(content) if content or not calls else None}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        if calls:
            message["tool_calls"] = calls
        finish = "tool_calls" if calls and reason == "stop" else reason
        usage = {"prompt_tokens": len(p["ids"]), "completion_tokens": n, "total_tokens": len(p["ids"]) + n}
        return JSONResponse({"id": cid, "object": "chat.completion", "created": created, "model": name,
                             "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                             "usage": usage}, headers=headers)

    async def stream(request, body, p, cid, created, name):
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta=None, finish=None, usage=None, choices=True):
            c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                 "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
                 if choices else []}
            if include_usage:
                c["usage"] = usage
            return f"data: {json.dumps(c, ensure_ascii=False)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        n_calls = 0
        try:
            async for ev in events(request, body, p):
                if ev[0] == "content":
                    yield chunk({"content": ev[1]})
                elif ev[0] == "reasoning":
                    yield chunk({"reasoning_content": ev[1]})
                elif ev[0] == "tool_call":
                    call = {"index": n_calls, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                            "function": ev[1]}
                    n_calls += 1
                    yield chunk({"tool_calls": [call]})
                else:
                    reason, n = ev[1], ev[2]
                    yield chunk({}, "tool_calls" if n_calls and reason == "stop" else reason)
                    if include_usage:
                        yield chunk(usage={"prompt_tokens": len(p["ids"]), "completion_tokens": n,
                                           "total_tokens": len(p["ids"]) + n}, choices=False)
        except APIError as e:  # the response has started: report in-band, as OpenAI does
            yield f"data: {json.dumps(error_body(e.message, e.type, e.param, e.code))}\n\n"
        yield "data: [DONE]\n\n"

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
    with cli_errors():
        model, tokenizer, name = load_model(args)
    app = create_app(model, tokenizer, name, args.api_key, args.max_seq_len, args.max_prompt_tokens,
                     args.max_batch_size, args.temperature, args.top_p)
    import uvicorn
    print(f"serving {name} at http://{args.host}:{args.port}/v1 (API key {'required' if args.api_key else 'off'})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
