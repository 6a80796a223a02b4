"""scripts/web_demo.py: the streamlit chat page.

Three levels:
  * helpers (no streamlit runtime): model discovery, <think> splitting, multi-byte-safe streaming, history;
  * the page itself through streamlit's AppTest (a real script run, widgets driven from Python) with a tiny
    random MiniMind saved in a tmp --save_dir, and with a fake OpenAI-compatible endpoint;
  * a real browser: `streamlit run` in a subprocess and headless Chromium driven by selenium (skipped when
    /usr/bin/chromium, /usr/bin/chromedriver or the selenium package is missing).

The browser test also makes the README picture: MINIMIND_WEB_SCREENSHOT=images/web_demo.png keeps its screenshot,
MINIMIND_WEB_SCREENSHOT_DIR points it at a folder with a trained model, MINIMIND_WEB_Q1 / MINIMIND_WEB_Q2 are the
questions typed and MINIMIND_WEB_ARGS extra page flags (e.g. "--max_new_tokens 256 --temperature 0").
"""
import importlib.util
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import free_port  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.atomic_io import atomic_save  # noqa: E402
from model.checkpoint import half_state_dict, load_tokenizer  # noqa: E402

APP = ROOT / "scripts" / "web_demo.py"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def load_page_module():
    """web_demo.py imported as a plain module: its page only runs as __main__, so this gives the helpers."""
    spec = importlib.util.spec_from_file_location("web_demo_under_test", APP)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


wd = load_page_module()


def save_tiny(save_dir: Path, name="full_sft_64.pth", layers=2, use_moe=False, seed=0) -> Path:
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=layers, use_moe=use_moe))
    path = save_dir / name
    atomic_save(half_state_dict(model), path)
    return path


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("weights")
    save_tiny(d)
    return d


# ================================================================================================================
# Helpers
# ================================================================================================================
def test_discovery_reads_names_layers_and_skips_non_models(tmp_path):
    save_tiny(tmp_path, "full_sft_64.pth", layers=2)
    save_tiny(tmp_path, "reason_64_moe.pth", layers=3, use_moe=True)
    atomic_save({"model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64),
                 "model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 8)}, tmp_path / "lora_x_64.pth")
    atomic_save({"step": 3}, tmp_path / "full_sft_64_resume.pth")
    atomic_save({"model.embed_tokens.weight": torch.zeros(10, 64), "value_head.weight": torch.zeros(1, 64)},
                tmp_path / "critic_64.pth")
    (tmp_path / "notes_about_64.pth").write_bytes(b"not a torch file")
    (tmp_path / "model.pth").write_bytes(b"")

    assert wd.inspect_native(tmp_path / "full_sft_64.pth") == {
        "weight": "full_sft", "hidden_size": 64, "use_moe": 0, "num_hidden_layers": 2}
    assert wd.inspect_native(tmp_path / "reason_64_moe.pth") == {
        "weight": "reason", "hidden_size": 64, "use_moe": 1, "num_hidden_layers": 3}
    for name in ["lora_x_64.pth", "full_sft_64_resume.pth", "critic_64.pth", "notes_about_64.pth", "model.pth"]:
        assert wd.inspect_native(tmp_path / name) is None, name

    # transformers folders: minimind and llama configs are listed, others (and skipped folders) are not.
    for sub, model_type in [("exports/mm-hf", "minimind"), ("exports/llama", "llama"), ("bert", "bert"),
                            ("checkpoints/mm", "minimind"), ("a/b/c/d/e/deep", "llama")]:
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "config.json").write_text(json.dumps({"model_type": model_type}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    found = [p.relative_to(tmp_path.resolve()).as_posix() for p in wd.find_hf_dirs([tmp_path])]
    assert found == ["exports/llama", "exports/mm-hf"]


def test_preselect_uses_the_size_the_flags_give():
    """--hidden_size defaults to None now: the wanted size is the preset's (or MiniMindConfig's 512)."""
    models = [{"kind": "native", "weight": "full_sft", "hidden_size": h} for h in (64, 512, 768)]
    parse = lambda *a: wd.parse_cli(["--load_from", "model", *a])  # noqa: E731
    assert wd.preselect(models, parse()) == 1
    assert wd.preselect(models, parse("--hidden_size", "64")) == 0
    assert wd.preselect(models, parse("--preset", "minimind3")) == 2
    assert wd.preselect(models, parse("--weight", "reason")) == 0  # no such weight: the first model


def test_reply_events_split_thinking_from_answer():
    reply = "<think>\n先算 4+5*8=44，再除以 2。\n</think>\n<answer>\n22\n</answer>"
    whole = wd.collect_reply(wd.reply_events([("text", reply)]))
    assert whole == ("先算 4+5*8=44，再除以 2。", "22")
    # Streamed one character at a time (tags split across pieces) gives the same split.
    assert wd.collect_reply(wd.reply_events(("text", c) for c in reply)) == whole
    # A separate reasoning channel (an API server's reasoning_content) plus plain content.
    pieces = [("reasoning", "想一想"), ("reasoning", "……"), ("text", None), ("text", "你好！"), ("text", "😀")]
    assert wd.collect_reply(wd.reply_events(pieces)) == ("想一想……", "你好！😀")
    # No think block: everything is the answer; an unfinished think block is all thinking so far.
    assert wd.collect_reply(wd.reply_events([("text", "只是回答")])) == ("", "只是回答")
    assert wd.collect_reply(wd.reply_events([("text", "<think>还在想")])) == ("还在想", "")
    # No tools offered: a tool call is left visible as text, not swallowed.
    _, answer = wd.collect_reply(wd.reply_events([("text", '<tool_call>{"name": "f"}</tool_call>')]))
    assert "<tool_call>" in answer
    # Tools offered: the call is an event (split across pieces or not), and an API's joined call passes through.
    text = 'Let me compute.<tool_call>\n{"name": "calculate_math", "arguments": {"expression": "6*7"}}\n</tool_call>'
    for pieces in ([("text", text)], [("text", c) for c in text]):
        events = list(wd.reply_events(pieces, parse_tools=True))
        assert [e for e in events if e[0] == "tool_call"] == [
            ("tool_call", {"name": "calculate_math", "arguments": '{"expression": "6*7"}'})]
        assert wd.collect_reply(events) == ("", "Let me compute.")
    api_call = {"id": "call_1", "name": "f", "arguments": "{}"}
    assert list(wd.reply_events([("reasoning", "hm"), ("tool_call", api_call)], parse_tools=True)) == [
        ("reasoning", "hm"), ("tool_call", api_call)]
    # A prompt that opened <think> (minimind-3's open_thinking): text is reasoning until </think>.
    assert wd.collect_reply(wd.reply_events([("text", "想想\n</think>\n\n好")], in_thinking=True)) == ("想想", "好")


def test_local_pieces_never_split_a_character(monkeypatch):
    tokenizer = load_tokenizer()
    text = "鳕鱼🐟和饕餮😀 ok"
    ids = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    # Precondition that makes the test meaningful: some tokens hold only part of a character.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    monkeypatch.setattr(wd, "stream_tokens", lambda model, prompt_ids, **kw: iter(ids))
    pieces = [p for kind, p in wd.local_pieces(None, tokenizer, "prompt", 64, 0.0, 1.0, 1.0) if p]
    assert len(pieces) > 3, "the reply should arrive in several pieces, not at the end"
    assert all("\ufffd" not in p for p in pieces), pieces
    assert "".join(pieces) == text


def test_trim_history_keeps_whole_exchanges():
    msgs = []
    for i in range(4):
        msgs += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}", "thinking": "t"}]
    assert wd.trim_history(msgs, 0) == []
    assert wd.trim_history(msgs, 2) == [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
                                        {"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}]
    assert wd.trim_history(msgs[1:], 4)[0] == {"role": "user", "content": "q1"}  # never starts mid-exchange


# ================================================================================================================
# The page, through streamlit's AppTest
# ================================================================================================================
def app(monkeypatch, save_dir: Path):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("MINIMIND_SAVE_DIR", str(save_dir))
    return AppTest.from_file(str(APP), default_timeout=60)


def chat(at):
    return [(m.name, " ".join(md.value for md in m.markdown)) for m in at.chat_message]


def test_page_chats_with_a_local_model_and_clears(monkeypatch, weights_dir):
    at = app(monkeypatch, weights_dir).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="model_choice").value == "full_sft_64  ·  2 layers"
    assert "minimind-full_sft_64" in at.caption[0].value
    at.slider(key="max_new_tokens").set_value(32)
    torch.manual_seed(0)
    at.chat_input[0].set_value("你好").run()
    assert not at.exception, at.exception
    (role_q, question), (role_a, answer) = chat(at)
    assert (role_q, question) == ("user", "你好")
    assert role_a == "assistant" and answer.strip()
    assert at.session_state["messages"][1]["content"] == answer  # stored for the next turn's history

    # A second turn re-renders the first from history and appends the new exchange.
    at.chat_input[0].set_value("再说一次").run()
    assert not at.exception, at.exception
    assert [r for r, _ in chat(at)] == ["user", "assistant", "user", "assistant"]
    assert chat(at)[0] == ("user", "你好") and chat(at)[1][1] == answer

    at.button(key="clear").click().run()
    assert not at.exception, at.exception
    assert chat(at) == [] and at.session_state["messages"] == []


def calculator_agent(tokenizer, answer: str, no_tool_reply: str):
    """A scripted model (helpers.PromptScriptedLM) that calls calculate_math("6*7") when the prompt offers the
    calculator, says `answer` once a <tool_response> is in the prompt, and `no_tool_reply` when no tool is offered."""
    from helpers import PromptScriptedLM
    replies = ['<tool_call>\n{"name": "calculate_math", "arguments": {"expression": "6*7"}}\n</tool_call>',
               answer, no_tool_reply]

    def choose(ids):
        prompt = tokenizer.decode([t for t in ids if t != 0])
        # the tool list: our compact template writes calculate_math(expression), minimind-3's the JSON schema
        return 1 if "<tool_response>" in prompt else 0 if "calculate_math" in prompt else 2

    return PromptScriptedLM([tokenizer(r, add_special_tokens=False).input_ids for r in replies],
                            tokenizer.eos_token_id, choose)


@pytest.mark.parametrize("which", ["ours", "minimind3"])
def test_page_runs_the_tool_loop_with_a_local_model(monkeypatch, request, tmp_path, tokenizer, which):
    """Tool picker + a local model (a scripted one in place of the loaded weights): the call, its result and
    then the answer are shown in that order, while streaming and again when the history is redrawn. Also with
    upstream's minimind-3 tokenizer (its own template, special tokens and pre-filled <think> block)."""
    import scripts.model_loading as ml
    if which == "minimind3":
        tokenizer = request.getfixturevalue("mm3")  # skips without ../shared (conftest.py)
    lm = calculator_agent(tokenizer, "6*7 = 42。", "没有工具可用。")
    monkeypatch.setattr(ml, "load_model", lambda args, log=print: (lm, tokenizer, "scripted"))
    save_tiny(tmp_path)
    at = app(monkeypatch, tmp_path).run()
    assert at.multiselect(key="tools").value == []
    at.chat_input[0].set_value("6*7 等于多少？").run()  # no tools picked: the model has none to call
    assert not at.exception, at.exception
    assert chat(at)[1] == ("assistant", "没有工具可用。")
    at.multiselect(key="tools").set_value(["calculate_math"])
    at.chat_input[0].set_value("What is 6*7?").run()
    assert not at.exception, at.exception

    def check(msg):
        assert [c.value for c in msg.code] == ['{"expression": "6*7"}', '{"result": "42"}']
        assert [md.value for md in msg.markdown if md.value] == [
            "🔧 Tool call: **calculate_math**", "📎 Tool result", "6*7 = 42。"]

    check(at.chat_message[3])
    stored = at.session_state["messages"][3]
    assert stored["content"] == "6*7 = 42。" and stored["steps"][0]["calls"] == [
        {"name": "calculate_math", "arguments": '{"expression": "6*7"}', "result": '{"result": "42"}', "ok": True}]
    at.toggle(key="show_thinking").set_value(False).run()  # a rerun draws the history from session state
    check(at.chat_message[3])


@pytest.mark.parametrize("which", ["ours", "minimind3"])
def test_thinking_switch_reaches_the_template(monkeypatch, request, tmp_path, tokenizer, which):
    """The sidebar's "Thinking" switch (not "Show thinking", which is display only) decides the prompt the model
    gets: on, our template leaves the header plain and minimind-3's opens <think> (its reply up to </think> is then
    shown as thinking); off, both pre-fill the empty block. It starts as the template does by default (ours: on,
    minimind-3's: off); `-- --enable_thinking 0|1` starts the page with it off or on."""
    import scripts.model_loading as ml
    from helpers import assert_thinking_prompt, prompt_recorder
    if which == "minimind3":
        tokenizer = request.getfixturevalue("mm3")  # skips without ../shared (conftest.py)
    prompts = []
    lm = prompt_recorder(tokenizer, "先想一想。\n</think>\n\n答案是 42。", prompts)
    monkeypatch.setattr(ml, "load_model", lambda args, log=print: (lm, tokenizer, "scripted"))
    save_tiny(tmp_path)
    at = app(monkeypatch, tmp_path).run()
    assert at.toggle(key="thinking").value is (which == "ours")
    at.toggle(key="thinking").set_value(True)
    at.toggle(key="show_thinking").set_value(False).run()  # display only: the model still thinks
    at.chat_input[0].set_value("问题").run()
    assert not at.exception, at.exception
    assert_thinking_prompt(prompts[-1], which, on=True)
    if which == "minimind3":
        assert at.session_state["messages"][1]["thinking"] == "先想一想。"
        assert at.session_state["messages"][1]["content"] == "答案是 42。"
    at.toggle(key="thinking").set_value(False).run()
    at.chat_input[0].set_value("再问").run()
    assert not at.exception, at.exception
    assert_thinking_prompt(prompts[-1], which, on=False)
    assert len(prompts) == 2

    for flag in (0, 1):
        monkeypatch.setattr(sys, "argv", [str(APP), "--enable_thinking", str(flag)])
        at = app(monkeypatch, tmp_path).run()
        assert at.toggle(key="thinking").value is bool(flag)


def test_page_without_models_says_what_to_do(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path).run()
    assert not at.exception, at.exception
    assert str(tmp_path) in at.info[0].value and "--save_dir" in at.info[0].value
    # A bad path typed in the sidebar is an error message, not a crash.
    at.text_input(key="custom_path").set_value(str(tmp_path / "nope.pth")).run()
    assert not at.exception, at.exception
    assert "no such folder" in at.sidebar.error[0].value


def test_page_finds_and_chats_with_a_transformers_folder(monkeypatch, tmp_path):
    """A plain LlamaForCausalLM folder (what convert_model.py torch2llama writes) is listed and generates through
    transformers' own cache (not MiniMind's fast loop)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    folder = tmp_path / "exports" / "tiny-llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=6400, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                 num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True,
                                 bos_token_id=1, eos_token_id=2, pad_token_id=0)).save_pretrained(folder)
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copyfile(ROOT / "model" / name, folder / name)
    at = app(monkeypatch, tmp_path).run()
    assert not at.exception, at.exception
    label = f"{folder.resolve()}  (transformers)"
    assert label in at.selectbox(key="model_choice").options
    at.selectbox(key="model_choice").set_value(label).run()
    assert not at.exception, at.exception
    assert "tiny-llama" in at.caption[0].value
    at.slider(key="max_new_tokens").set_value(16)
    at.chat_input[0].set_value("hello").run()
    assert not at.exception, at.exception
    assert chat(at)[1][0] == "assistant" and chat(at)[1][1].strip()


class FakeOpenAI(BaseHTTPRequestHandler):
    """/v1/chat/completions streaming a reasoning_content part then a content part, as our server does; with
    tools and no tool result yet, a call streamed as OpenAI does (id and name first, the arguments in pieces)."""
    requests = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        deltas = [{"role": "assistant", "content": ""}, {"reasoning_content": "用户在打招呼，"},
                  {"reasoning_content": "礼貌回应。"}, {"content": "你好！"}, {"content": "我是 MiniMind。"}]
        if body.get("tools") and body["messages"][-1]["role"] != "tool":
            deltas = [{"role": "assistant", "content": None}, {"tool_calls": [
                {"index": 0, "id": "call_x1", "type": "function", "function": {"name": "get_exchange_rate",
                                                                             "arguments": ""}}]},
                      {"tool_calls": [{"index": 0, "function": {"arguments": '{"from_currency": "USD", '}}]},
                      {"tool_calls": [{"index": 0, "function": {"arguments": '"to_currency": "CNY", "amount": 100}'}}]}]
        elif body.get("tools"):
            deltas = [{"role": "assistant", "content": ""}, {"content": "100 美元约合 721 元人民币。"}]
        for d in deltas:
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeOpenAI.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_page_talks_to_an_openai_endpoint_and_shows_thinking(monkeypatch, tmp_path, fake_api):
    at = app(monkeypatch, tmp_path).run()
    at.radio(key="backend").set_value("API endpoint").run()
    at.text_input(key="api_base").set_value(fake_api)
    at.text_input(key="api_model").set_value("minimind-test")
    at.text_area(key="system_prompt").set_value("你是 MiniMind。")
    at.chat_input[0].set_value("你好").run()
    assert not at.exception, at.exception
    assert chat(at)[1][0] == "assistant" and "你好！我是 MiniMind。" in chat(at)[1][1]
    assert at.expander[0].label.startswith("💭 Thinking")
    assert at.expander[0].markdown[0].value == "用户在打招呼，礼貌回应。"
    req = FakeOpenAI.requests[-1]
    assert req["stream"] is True and req["model"] == "minimind-test"
    assert req["messages"] == [{"role": "system", "content": "你是 MiniMind。"}, {"role": "user", "content": "你好"}]
    # the Thinking switch travels as chat_template_kwargs (the server maps it to its template's switch)
    assert req["chat_template_kwargs"] == {"enable_thinking": True}

    # The next turn sends the previous exchange (answer only, no thinking) as history.
    at.chat_input[0].set_value("谢谢").run()
    assert FakeOpenAI.requests[-1]["messages"][1:] == [
        {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！我是 MiniMind。"},
        {"role": "user", "content": "谢谢"}]
    assert len(at.expander) == 2  # both replies' thinking, collapsible
    at.toggle(key="show_thinking").set_value(False).run()
    assert len(at.expander) == 0 and len(chat(at)) == 4
    at.toggle(key="thinking").set_value(False)
    at.chat_input[0].set_value("再见").run()
    assert FakeOpenAI.requests[-1]["chat_template_kwargs"] == {"enable_thinking": False}


def test_page_runs_the_tool_loop_with_an_endpoint(monkeypatch, tmp_path, fake_api):
    at = app(monkeypatch, tmp_path).run()
    at.radio(key="backend").set_value("API endpoint").run()
    at.text_input(key="api_base").set_value(fake_api)
    at.multiselect(key="tools").set_value(["get_exchange_rate", "calculate_math"])
    at.chat_input[0].set_value("100美元换多少人民币？").run()
    assert not at.exception, at.exception
    first, second = FakeOpenAI.requests[-2:]
    assert [t["function"]["name"] for t in first["tools"]] == ["get_exchange_rate", "calculate_math"]
    # the joined call went back as an assistant message, its result as a tool message with the same id: the one
    # model/tool_loop.py gives every call (call_<turn>_<k>, for any backend), not the endpoint's "call_x1"
    args = '{"from_currency": "USD", "to_currency": "CNY", "amount": 100}'
    assert second["messages"][-2] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0_0", "type": "function", "function": {"name": "get_exchange_rate", "arguments": args}}]}
    result = '{"from": "USD", "to": "CNY", "rate": 7.21, "amount": 100, "converted": 721}'
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_0_0", "content": result}
    msg = at.chat_message[1]
    assert [c.value for c in msg.code] == [args, result]
    shown = [md.value for md in msg.markdown if md.value]
    assert shown == ["🔧 Tool call: **get_exchange_rate**", "📎 Tool result", "100 美元约合 721 元人民币。"]
    assert at.session_state["messages"][1]["content"] == "100 美元约合 721 元人民币。"


def test_page_reports_an_unreachable_endpoint(monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    at = app(monkeypatch, tmp_path).run()
    at.radio(key="backend").set_value("API endpoint").run()
    at.text_input(key="api_base").set_value(f"http://127.0.0.1:{port}/v1")
    at.chat_input[0].set_value("你好").run()
    assert not at.exception, at.exception
    assert "failed" in at.error[0].value
    assert at.session_state["messages"] == []  # the unanswered question is not kept in the history


# ================================================================================================================
# A real browser
# ================================================================================================================
def wait_healthy(url: str, proc, timeout: float = 60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"streamlit at {url} not healthy after {timeout}s")


def browser_skip_reason():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        return f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "needs the selenium package (pip install selenium)"
    return None


@contextmanager
def browser_page(tmp_path, page_args):
    """`streamlit run` the page (cwd elsewhere than the repo) with `page_args` after `--`, and a headless Chromium
    on it; yields (driver, wait). Both are stopped afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal", "--", *page_args]
    env = dict(os.environ, HOME=str(tmp_path), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    env.pop("MINIMIND_SAVE_DIR", None)  # the flags after `--` must be what selects the weights
    # cwd elsewhere than the repo: the page must find its imports and defaults by itself.
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = None
    try:
        wait_healthy(url, proc)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                     "--window-size=1280,900", "--lang=en-US"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.get(url)
        yield driver, WebDriverWait(driver, 60, poll_frequency=0.2)
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def ask(driver, wait, question: str, n: int):
    """Type `question` into the chat box and wait for the n-th exchange to finish -> its two message elements."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    box = driver.find_element(By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']")
    box.send_keys(question)
    box.send_keys(Keys.ENTER)

    def reply_done(d):
        # The user's message is drawn by the script run the question starts, so once it is there the run has
        # begun; the root's script state (as in streamlit's own e2e tests) then says when it ended.
        msgs = d.find_elements(By.CSS_SELECTOR, "[data-testid='stChatMessage']")
        state = d.find_element(By.CSS_SELECTOR, "[data-testid='stApp']").get_attribute("data-test-script-state")
        return msgs if len(msgs) == 2 * n and state == "notRunning" else False

    return wait.until(reply_done)[-2:]


@pytest.mark.skipif(browser_skip_reason() is not None, reason=str(browser_skip_reason()))
def test_browser_chat_round_trip(tmp_path, weights_dir):
    from selenium.webdriver.common.by import By

    save_dir = Path(os.environ.get("MINIMIND_WEB_SCREENSHOT_DIR", weights_dir))
    page_args = ["--save_dir", str(save_dir), "--max_new_tokens", "48", "--device", "cpu"]
    page_args += shlex.split(os.environ.get("MINIMIND_WEB_ARGS", ""))
    with browser_page(tmp_path, page_args) as (driver, wait):
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']"))
        # The sidebar lists the model found in --save_dir, and the caption names it once it is loaded.
        wait.until(lambda d: "minimind-" in d.find_element(By.CSS_SELECTOR, "[data-testid='stCaptionContainer']").text)

        questions = [os.environ.get("MINIMIND_WEB_Q1", "你好")]
        if os.environ.get("MINIMIND_WEB_Q2"):
            questions.append(os.environ["MINIMIND_WEB_Q2"])
        for n, question in enumerate(questions, start=1):
            msgs = ask(driver, wait, question, n)
            content = [m.find_element(By.CSS_SELECTOR, "[data-testid='stChatMessageContent']") for m in msgs]
            assert content[0].text.strip() == question
            reply = content[1].get_attribute("textContent").strip()
            assert reply and reply != "(empty reply)", "the assistant's reply is empty"
        assert not driver.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")

        if os.environ.get("MINIMIND_WEB_SCREENSHOT"):  # README picture: open the thinking boxes
            for summary in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander'] summary"):
                summary.click()
            time.sleep(0.5)
        shot = tmp_path / "web_demo.png"
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("MINIMIND_WEB_SCREENSHOT"):
            target = Path(os.environ["MINIMIND_WEB_SCREENSHOT"])
            target = target if target.is_absolute() else ROOT / target
            shutil.copyfile(shot, target)


@pytest.mark.skipif(browser_skip_reason() is not None, reason=str(browser_skip_reason()))
def test_browser_tool_round_trip(tmp_path, tokenizer):
    """The page in API mode against our server (a scripted model that calls the calculator, then answers once
    the result is in its prompt), with --tools picking the calculator: the browser shows the call, the tool
    result and then the answer, in that order."""
    from selenium.webdriver.common.by import By
    from test_server import serve
    from scripts.serve_openai_api import create_app
    lm = calculator_agent(tokenizer, "The answer is 42.", "No tools here.")
    with serve(create_app(lm, tokenizer, "scripted", max_seq_len=2048)) as api, \
            browser_page(tmp_path, ["--api_base", api + "/v1", "--tools", "calculate_math"]) as (driver, wait):
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']"))
        question, answer = [m.find_element(By.CSS_SELECTOR, "[data-testid='stChatMessageContent']")
                            for m in ask(driver, wait, "What is 6*7?", 1)]
        assert question.text.strip() == "What is 6*7?"
        codes = [c.get_attribute("textContent").strip() for c in answer.find_elements(By.CSS_SELECTOR,
                                                                                     "[data-testid='stCode']")]
        assert codes == ['{"expression": "6*7"}', '{"result": "42"}']
        text = answer.get_attribute("textContent")
        order = [text.find(x) for x in ("Tool call: calculate_math", '{"expression": "6*7"}', "Tool result",
                                        '{"result": "42"}', "The answer is 42.")]
        assert -1 not in order and order == sorted(order), (order, text)
        assert not driver.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
