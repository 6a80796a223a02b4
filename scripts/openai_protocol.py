"""The OpenAI chat-completions wire format for scripts/serve_openai_api.py: the request schema (pydantic) and
OpenAI-shaped error responses.

Validation: a body that is not JSON -> 400 (code json_invalid); a field of the wrong type or shape, or a missing
one -> 422 (invalid_request_body); a well-typed value out of range (temperature 3, max_tokens 0, n 2, five stop
strings, no messages) -> 400 (invalid_value), as OpenAI answers. Every error body is
{"error": {"message", "type", "param", "code"}}; `param` names the offending field.
"""
import json
from dataclasses import dataclass
from typing import List, Literal, Optional, Union

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException


# ================================================================================================================
# Request schema: pydantic checks types (422) and values (400, see `validation_error`)
# ================================================================================================================
class FunctionCall(BaseModel):
    name: str
    arguments: Union[str, dict] = "{}"

    @field_validator("arguments")
    @classmethod
    def _as_json(cls, args):  # the chat template writes the string as is (a dict would be ASCII-escaped)
        return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


class ToolCall(BaseModel):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: Optional[str] = None


class Message(BaseModel):
    """One chat message; `model_dump(exclude_none=True)` is what the chat template reads."""
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, List[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[List[ToolCall]] = None
    tool_call_id: Optional[str] = None
    reasoning_content: Optional[str] = None

    @field_validator("role")
    @classmethod
    def _developer_is_system(cls, role):
        return "system" if role == "developer" else role

    @field_validator("content")
    @classmethod
    def _text(cls, content):  # text parts joined; images and audio are not for this model
        if isinstance(content, list):
            return "".join(p.text or "" for p in content if p.type in ("text", "input_text"))
        return content or ""


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
    messages: List[Message] = Field(min_length=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    stop: Union[str, List[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    tools: Optional[List[Tool]] = None
    tool_choice: Union[str, dict, None] = None  # checked by `tool_plan` (400 with param tool_choice)
    parallel_tool_calls: Optional[bool] = None  # false: the reply ends after its first call
    seed: Optional[int] = None
    n: Optional[int] = None
    # extensions (vLLM-style)
    top_k: Optional[int] = Field(None, ge=0)
    repetition_penalty: Optional[float] = Field(None, gt=0)
    ignore_eos: bool = False
    enable_thinking: Optional[bool] = None  # or open_thinking (upstream minimind-3's name) or either inside
    open_thinking: Optional[bool] = None    # chat_template_kwargs: model/chat_template.thinking_kwargs maps them
    chat_template_kwargs: Optional[dict] = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n):
        if n not in (None, 1):
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or not all(stops):
            raise ValueError("must be up to 4 non-empty strings")
        return stops


# ================================================================================================================
# SGLang's native API (POST /generate, POST /update_weights_from_disk): token ids in, token ids out. An RL trainer
# (trainer/rl_utils.py HttpRollouts) speaks it to our server or to an SGLang server. Field names are SGLang's
# (io_struct.py GenerateReqInput, sampling_params.py SamplingParams); we take the subset an RL rollout needs and
# refuse, with a 400, the options that would change the output and that we do not implement.
# ================================================================================================================
class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="allow")  # SGLang has many more (checked by `unsupported` below)
    max_new_tokens: int = Field(128, ge=0)    # SGLang's default
    temperature: float = Field(1.0, ge=0)     # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = -1                           # -1 (or 0) = off
    repetition_penalty: float = Field(1.0, gt=0)
    stop_token_ids: Optional[List[int]] = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True          # for `text` only; output_ids are always every token
    sampling_seed: Optional[int] = None       # SGLang's name; `seed` is accepted too
    seed: Optional[int] = None

    def unsupported(self) -> Optional[str]:
        """The first option set to a value we would silently ignore, or None."""
        extra = self.model_extra or {}
        defaults = {"n": 1, "min_new_tokens": 0, "frequency_penalty": 0.0, "presence_penalty": 0.0, "min_p": 0.0,
                    "stop": None, "regex": None, "json_schema": None, "ebnf": None, "structural_tag": None}
        for key, default in defaults.items():
            if key in extra and extra[key] not in (default, [], ""):
                return key
        return None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # rid, lora_path, ...: not used
    text: Union[str, List[str], None] = None
    input_ids: Union[List[int], List[List[int]], None] = None
    sampling_params: Union[SamplingParams, List[SamplingParams], None] = None
    return_logprob: Union[bool, List[bool]] = False
    stream: bool = False


class UpdateWeightsFromDiskRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # load_format, flush_cache, abort_all_requests, ...: not needed
    model_path: str
    weight_version: Optional[str] = None


# ================================================================================================================
# Tools: what tool_choice asks for, and tool calls on the wire
# ================================================================================================================
@dataclass
class ToolPlan:
    """What a request's tools and tool_choice mean for generation.

    tools:   the schemas rendered into the prompt (None: no tools, and <tool_call> text stays plain content)
    prefill: text appended after the assistant header to force a call ("required": '<tool_call>\n'; a named
             function: the call's opening up to its arguments, so the name cannot come out different). A small
             model has no constrained decoding; starting its reply for it is the cheap, exact way to force a call.
    """
    tools: Optional[List[dict]] = None
    prefill: str = ""


def tool_plan(body: ChatCompletionRequest) -> ToolPlan:
    """Interpret tools + tool_choice ("none" | "auto" | "required" | {"type": "function", "function": {"name"}});
    raises APIError 400 (param tool_choice) for a value OpenAI would refuse."""
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    choice = body.tool_choice
    if choice == "none":
        return ToolPlan(tools=None)
    if choice is None or choice == "auto":
        return ToolPlan(tools=tools or None)
    if choice == "required" or isinstance(choice, dict):
        if not tools:
            raise APIError(400, "tool_choice requires tools: send the functions the model may call in `tools`",
                           "tool_choice", "invalid_value")
        if choice == "required":
            return ToolPlan(tools=tools, prefill="<tool_call>\n")
        fn = choice.get("function") if choice.get("type") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise APIError(400, 'tool_choice must be "none", "auto", "required" or {"type": "function", '
                                f'"function": {{"name": ...}}}}, got {json.dumps(choice)[:200]}', "tool_choice",
                           "invalid_value")
        named = [t for t in tools if t["function"]["name"] == name]
        if not named:
            raise APIError(400, f"tool_choice names function {name!r}, which is not in tools (tools: "
                                f"{', '.join(t['function']['name'] for t in tools)})", "tool_choice", "invalid_value")
        # Only the named tool is offered, and the reply starts as our chat template writes a call to it.
        return ToolPlan(tools=named[:1], prefill=f'<tool_call>\n{{"name": {json.dumps(name, ensure_ascii=False)}, '
                                                 f'"arguments": ')
    raise APIError(400, f'tool_choice must be "none", "auto", "required" or a named function, got {choice!r}',
                   "tool_choice", "invalid_value")


def tool_call_message(call: dict, call_id: str) -> dict:
    """A parsed call {"name", "arguments"} -> one entry of a non-streamed message.tool_calls."""
    return {"id": call_id, "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}


def tool_call_deltas(call: dict, call_id: str, index: int) -> List[dict]:
    """A parsed call -> its streamed `delta.tool_calls` entries, as OpenAI sends them: the first carries index, id,
    type and function.name with arguments "", the next carry argument text under the same index (clients join
    them per index; parallel calls get indexes 0, 1, ...). A call is sent once its JSON is known valid (a delta
    cannot be taken back), so its arguments go in one piece."""
    return [{"index": index, "id": call_id, "type": "function", "function": {"name": call["name"], "arguments": ""}},
            {"index": index, "function": {"arguments": call["arguments"]}}]


# ================================================================================================================
# Errors
# ================================================================================================================
class APIError(Exception):
    """An error for the client: rendered as OpenAI's {"error": {...}} with `status` (an HTTP answer, not a CLI
    exit, so not a model.errors.UserError)."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_body(message: str, type: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


VALUE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "value_error"}


async def api_error(request, exc: APIError):
    return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status)


async def validation_error(request, exc: RequestValidationError):
    """Unparseable JSON: 400; a well-formed body with an out-of-range value: 400 (as OpenAI); a wrong shape: 422."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse(error_body("We could not parse the JSON body of your request.", code="json_invalid"),
                            status_code=400)
    parts, param = [], None
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        param = param or (loc[0] if loc else None)
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc) or 'body'}: {msg}" + (f" (got {e['input']!r})" if "input" in e else ""))
    if all(e.get("type") in VALUE_ERRORS for e in errors):
        return JSONResponse(error_body("Invalid value: " + "; ".join(parts[:5]), param=param, code="invalid_value"),
                            status_code=400)
    return JSONResponse(error_body("Invalid request: " + "; ".join(parts[:5]), param=param,
                                   code="invalid_request_body"), status_code=422)


async def server_error(request, exc: Exception):  # a bug: still answer in OpenAI's shape
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"), status_code=500)


async def http_error(request: Request, exc: StarletteHTTPException):
    if exc.status_code == 404:
        msg = f"Unknown request URL: {request.method} {request.url.path}."
        return JSONResponse(error_body(msg, code="unknown_url"), status_code=404)
    return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


EXCEPTION_HANDLERS = {APIError: api_error, RequestValidationError: validation_error, Exception: server_error,
                      StarletteHTTPException: http_error}
