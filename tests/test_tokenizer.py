"""Tests for the shipped tokenizer (model/) and for trainer/train_tokenizer.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from transformers import AutoTokenizer  # noqa: E402

from trainer.train_tokenizer import (  # noqa: E402
    ADDED_TOKENS,
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TAG_TOKENS,
    iter_texts,
    save_tokenizer,
    train_tokenizer,
)

MODEL_DIR = REPO_ROOT / "model"

EXPECTED_IDS = {
    "<|endoftext|>": 0,
    "<|im_start|>": 1,
    "<|im_end|>": 2,
    "<think>": 3,
    "</think>": 4,
    "<answer>": 5,
    "</answer>": 6,
    "<tool_call>": 7,
    "</tool_call>": 8,
    "<tool_response>": 9,
    "</tool_response>": 10,
}


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


def render(tok, messages, **kwargs):
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


# -----------------------------------------------------------------------------
# vocabulary and ids


def test_vocab_size(tok):
    assert len(tok) == 6400
    assert tok.vocab_size == 6400


def test_added_token_ids(tok):
    assert ADDED_TOKENS == list(EXPECTED_IDS)
    for token, token_id in EXPECTED_IDS.items():
        assert tok.convert_tokens_to_ids(token) == token_id
        # never split, and not merged with surrounding text
        assert tok.encode(token) == [token_id]
        assert token_id in tok.encode(f"abc{token}def")


def test_pad_bos_eos_unk(tok):
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 0)
    assert tok.model_max_length == 32768


def test_special_flags(tok):
    assert set(tok.all_special_tokens) == set(SPECIAL_TOKENS)
    for token in TAG_TOKENS:
        assert token not in tok.all_special_tokens


def test_no_bos_eos_added(tok):
    assert tok("hello")["input_ids"] == tok.encode("hello", add_special_tokens=False)
    assert 1 not in tok("hello")["input_ids"] and 2 not in tok("hello")["input_ids"]


def test_shipped_config_keeps_chat_template(tok):
    config = json.loads((MODEL_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == CHAT_TEMPLATE
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok.chat_template == CHAT_TEMPLATE


# -----------------------------------------------------------------------------
# round trips

ROUND_TRIP_TEXTS = [
    "今天天气很好，我们去公园散步吧。人工智能正在改变世界！",
    "The quick brown fox jumps over the lazy dog. It's 3.14159, isn't it?",
    "def f(x):\n    if x:\n\treturn [i ** 2 for i in range(x)]  # comment\n\n\n    return None\r\n",
    "  leading spaces, trailing spaces   ",
    "emoji 😀🤖 ZWJ family 👨‍👩‍👧‍👦 technologist 👩🏽‍💻 flags 🇨🇳🇺🇸🏳️‍🌈 keycap 1️⃣",
    "混合 mixed 文本 with English, 数字 12345 and ①②③ and math ∑ x² ≤ ∞ — «quotes» ‘x’",
    "日本語のテキスト、한국어 텍스트, Ελληνικά, русский, العربية",
    "\x00\x01 control \u200b zero width \ufeff bom",
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\n想一想\n</think>\n\n好的<|im_end|>",
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_skip_special_tokens_keeps_tags(tok):
    text = "<|im_start|>assistant\n<think>\nreason\n</think>\n\n<tool_call>\n{}\n</tool_call><|im_end|><|endoftext|>"
    out = tok.decode(tok.encode(text), skip_special_tokens=True)
    assert out == "assistant\n<think>\nreason\n</think>\n\n<tool_call>\n{}\n</tool_call>"


# -----------------------------------------------------------------------------
# chat template


def test_template_system_multi_turn(tok):
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！有什么可以帮你？"},
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2"},
    ]
    assert render(tok, messages) == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n"
        "<|im_start|>assistant\n你好！有什么可以帮你？<|im_end|>\n"
        "<|im_start|>user\n1+1?<|im_end|>\n"
        "<|im_start|>assistant\n2<|im_end|>\n"
    )


def test_template_no_system_block(tok):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert render(tok, messages) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"


def test_template_generation_prompt(tok):
    messages = [{"role": "user", "content": "hi"}]
    assert render(tok, messages) == "<|im_start|>user\nhi<|im_end|>\n"
    assert render(tok, messages, add_generation_prompt=True) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert (
        render(tok, messages, add_generation_prompt=True, enable_thinking=True)
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        render(tok, messages, add_generation_prompt=True, enable_thinking=False)
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_template_reasoning_content(tok):
    messages = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2", "reasoning_content": "one plus one is two"},
    ]
    assert render(tok, messages) == (
        "<|im_start|>user\n1+1?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\none plus one is two\n</think>\n\n2<|im_end|>\n"
    )
    # content that already carries its <think> block is left untouched
    messages[1] = {"role": "assistant", "content": "<think>\nx\n</think>\n\n2", "reasoning_content": "ignored"}
    assert render(tok, messages).endswith("<|im_start|>assistant\n<think>\nx\n</think>\n\n2<|im_end|>\n")


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "查询天气",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# Tools are listed compactly, one line per tool (full JSON schemas cost a small model ~10x the prompt tokens).
TOOLS_SUFFIX = (
    "# Tools\n<tools>\nget_weather(city): 查询天气\n</tools>\nCall a tool with:\n"
    '<tool_call>\n{"name": <tool>, "arguments": {<args>}}\n</tool_call><|im_end|>\n'
)


def test_template_tools_in_system(tok):
    user = [{"role": "user", "content": "北京天气？"}]
    out = render(tok, user, tools=[WEATHER_TOOL])
    assert out == "<|im_start|>system\n" + TOOLS_SUFFIX + "<|im_start|>user\n北京天气？<|im_end|>\n"
    # with a system message: user's system text first, then the tools
    out = render(tok, [{"role": "system", "content": "Be brief."}] + user, tools=[WEATHER_TOOL])
    assert out == "<|im_start|>system\nBe brief.\n\n" + TOOLS_SUFFIX + "<|im_start|>user\n北京天气？<|im_end|>\n"


def test_template_tool_lines_are_compact(tok):
    """name(arg, num: number, optional?, choice: a|b): description; strings untyped, argument descriptions left
    out; a schema without the {"type": "function"} wrapper and one without arguments or a description work too."""
    convert = {"type": "function", "function": {
        "name": "convert", "description": "单位换算", "parameters": {"type": "object", "properties": {
            "value": {"type": "number"}, "unit": {"type": "string", "description": "e.g. km"},
            "to": {"type": "string", "enum": ["km", "mile"]}, "digits": {"type": ["integer", "null"]}},
            "required": ["value", "unit", "to"]}}}
    bare = {"name": "now", "parameters": {"type": "object", "properties": {}}}
    out = render(tok, [{"role": "user", "content": "hi"}], tools=[convert, bare])
    assert out.startswith("<|im_start|>system\n# Tools\n<tools>\n"
                          "convert(value: number, unit, to: km|mile, digits?: integer|null): 单位换算\n"
                          "now()\n</tools>\n")
    assert "e.g. km" not in out and '"parameters"' not in out


def test_template_assistant_tool_calls(tok):
    messages = [
        {"role": "user", "content": "天气？"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}],
        },
        {
            "role": "assistant",
            "content": "Checking two cities.",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
            ],
        },
    ]
    assert render(tok, messages) == (
        "<|im_start|>user\n天气？<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>assistant\nChecking two cities.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
    )


def test_template_tool_responses(tok):
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "content": '{"temp": 20}'},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "20 and sunny"},
        {"role": "tool", "content": "late"},
    ]
    assert render(tok, messages) == (
        "<|im_start|>user\nq<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response>\n{"temp": 20}\n</tool_response>\n<tool_response>\nsunny\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n20 and sunny<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nlate\n</tool_response><|im_end|>\n"
    )


def test_assistant_header_tokens_are_stable(tok):
    """The SFT loss mask searches the token ids for the '<|im_start|>assistant\\n' header."""
    header = tok.encode("<|im_start|>assistant\n")
    assert header[0] == 1
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert ids == tok.encode(render(tok, messages))
    start = next(i for i in range(len(ids)) if ids[i : i + len(header)] == header)
    assert tok.decode(ids[start + len(header) :]) == "你好！<|im_end|>\n"
    assert ids[-2:] == [2, tok.encode("\n")[0]]


# -----------------------------------------------------------------------------
# the training script


def write_corpus(path, n_lines, bad_line=None):
    words_en = ["model", "token", "train", "data", "the", "learning", "language", "small", "fast", "tokenizer"]
    words_zh = ["模型", "训练", "数据", "语言", "学习", "你好", "世界", "小型", "快速", "分词"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1, n_lines + 1):
            if i == bad_line:
                f.write('{"text": "unterminated\n')
                continue
            en = " ".join(words_en[(i * k) % 10] for k in range(1, 8))
            zh = "".join(words_zh[(i + k) % 10] for k in range(6))
            f.write(json.dumps({"text": f"{en}. {zh}。{i}"}, ensure_ascii=False) + "\n")


def test_train_tiny_tokenizer_with_functions(tmp_path):
    data = tmp_path / "tiny.jsonl"
    write_corpus(data, 200)
    tokenizer = train_tokenizer(data, vocab_size=300, min_frequency=2, show_progress=False)
    assert tokenizer.get_vocab_size() == 300
    save_tokenizer(tokenizer, tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert len(tok) == 300
    for token, token_id in EXPECTED_IDS.items():
        assert tok.convert_tokens_to_ids(token) == token_id
    text = "model 模型 🤖 unseen ÿ"
    assert tok.decode(tok.encode(text)) == text


def test_train_script_cli(tmp_path):
    data = tmp_path / "tiny.jsonl"
    # The malformed line sits after --max_lines, so it must never be read.
    write_corpus(data, 230, bad_line=220)
    save_dir = tmp_path / "tok"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "trainer" / "train_tokenizer.py"),
         "--data_path", str(data), "--vocab_size", "300", "--max_lines", "200", "--save_dir", str(save_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in save_dir.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    tok = AutoTokenizer.from_pretrained(str(save_dir))
    assert len(tok) == 300
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("</tool_response>") == 10
    assert tok.chat_template == CHAT_TEMPLATE


def test_malformed_line_names_file_and_line(tmp_path):
    data = tmp_path / "bad.jsonl"
    write_corpus(data, 5, bad_line=4)
    with pytest.raises(ValueError, match=rf"{data.name}:4: invalid JSON"):
        list(iter_texts(data))
    # the error also surfaces through the (Rust) trainer unchanged
    with pytest.raises(ValueError, match=rf"{data.name}:4:"):
        train_tokenizer(data, vocab_size=300, show_progress=False)


def test_missing_text_field_names_file_and_line(tmp_path):
    data = tmp_path / "notext.jsonl"
    data.write_text('{"text": "ok"}\n\n{"content": "no text key"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{data.name}:3: expected"):
        list(iter_texts(data))


def test_iter_texts_skips_blank_lines_and_caps(tmp_path):
    data = tmp_path / "c.jsonl"
    data.write_text('{"text": "a"}\n\n   \n{"text": "b"}\n{"text": "c"}\n', encoding="utf-8")
    assert list(iter_texts(data)) == ["a", "b", "c"]
    assert list(iter_texts(data, max_lines=2)) == ["a", "b"]


# -----------------------------------------------------------------------------
# upstream's minimind-3 tokenizer (--tokenizer_path ../shared/data/reference/minimind3_tokenizer)

def test_shipped_tokenizer_stays_ours(tok, mm3):
    """Same size and the same ChatML control ids, but a different vocabulary, tag ids and template: released
    minimind-3 weights need upstream's tokenizer, ours go with MiniMind2 weights and models trained here."""
    assert len(tok) == len(mm3) == 6400
    assert (mm3.pad_token_id, mm3.bos_token_id, mm3.eos_token_id) == (tok.pad_token_id, tok.bos_token_id,
                                                                     tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids(["<tool_call>", "<think>"]) == [7, 3]
    assert mm3.convert_tokens_to_ids(["<tool_call>", "<think>"]) == [21, 25]
    assert tok.chat_template == CHAT_TEMPLATE != mm3.chat_template
    assert "open_thinking" in mm3.chat_template and "open_thinking" not in tok.chat_template


def test_minimind3_template_always_renders_a_think_block(mm3):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert render(mm3, messages) == ("<|im_start|>user\nhi<|im_end|>\n"
                                     "<|im_start|>assistant\n<think>\n\n</think>\n\nhello<|im_end|>\n")
    prompt = [{"role": "user", "content": "hi"}]
    head = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render(mm3, prompt, add_generation_prompt=True) == head + "<think>\n\n</think>\n\n"
    assert render(mm3, prompt, add_generation_prompt=True, open_thinking=False) == head + "<think>\n\n</think>\n\n"
    assert render(mm3, prompt, add_generation_prompt=True, open_thinking=True) == head + "<think>\n"
    # It does not know our switch: enable_thinking is ignored there (model/chat_template.py maps it).
    assert render(mm3, prompt, add_generation_prompt=True, enable_thinking=True) == head + "<think>\n\n</think>\n\n"


def test_both_templates_write_the_same_tool_call_text(tok, mm3):
    """The <tool_call> block an assistant turn renders to is identical, so parsing and the server work alike."""
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}
    messages = [{"role": "user", "content": "天气？"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "晴"}]
    block = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call><|im_end|>\n'
    response = "<|im_start|>user\n<tool_response>\n晴\n</tool_response><|im_end|>\n"
    assert render(tok, messages).endswith("<|im_start|>assistant\n" + block + response)
    assert render(mm3, messages).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n" + block + response)
