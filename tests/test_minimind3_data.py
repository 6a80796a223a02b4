"""minimind-3 data and tokenizer compatibility (issue #12 items 4-5, issue #13 tool-call masks).

- the tool fields of upstream's files (tools / tool_calls as JSON strings or lists, reasoning_content) and the
  agent_rl layout (a gt list) in the SFT, DPO, RL and agent datasets; bad JSON in them names file:line;
- SFT masks token by token with our tokenizer AND upstream's minimind-3 tokenizer (--tokenizer_path): assistant
  content, tool calls and the closing <|im_end|> are learned; system, user, tool results and headers are not;
- the thinking switch mapping (enable_thinking / open_thinking / chat_template_kwargs);
- the bundled tool-call samples and scripts/download_data.py's minimind-3 names.
"""
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset.lm_dataset import (AgentRLDataset, DataFormatError, DPODataset, PackedPretrainDataset,  # noqa: E402
                                RLAIFDataset, SFTDataset, chat_messages, collate_lists)
from helpers import SAMPLE, write_jsonl  # noqa: E402
from model.chat_template import ChatTemplateArgumentError, thinking_kwargs, thinking_switches  # noqa: E402
from model.errors import UserError  # noqa: E402
from model.tools import call_tool, parse_tool_calls, tool_schemas  # noqa: E402



@pytest.fixture(scope="module", params=["ours", "minimind3"])
def tok(request):
    return request.getfixturevalue("tokenizer" if request.param == "ours" else "mm3")  # conftest.py


def is_mm3(tok):
    return "open_thinking" in (tok.chat_template or "")


def tool_listing(tok, name):
    """How the system prompt lists tool `name`: our template one compact line `name(args): description`,
    minimind-3's the JSON schema."""
    return f'"name": "{name}", "description"' if is_mm3(tok) else f"\n{name}(expression): "


# Think block every assistant turn gets from minimind-3's template (its template always renders one).
def think(tok, reasoning=""):
    if reasoning:
        return f"<think>\n{reasoning}\n</think>\n\n"
    return "<think>\n\n</think>\n\n" if is_mm3(tok) else ""


CALC = {"type": "function", "function": {"name": "calculate_math", "arguments": {"expression": "12*7"}}}
TIME = {"type": "function", "function": {"name": "get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}}
CALC_RESULT = call_tool("calculate_math", {"expression": "12*7"})
TIME_RESULT = call_tool("get_current_time", {"timezone": "Asia/Tokyo"})
TOOL_CONV = [
    {"role": "system", "content": "You are MiniMind.", "tools": tool_schemas(["calculate_math", "get_current_time"])},
    {"role": "user", "content": "12*7 是多少？东京几点？"},
    {"role": "assistant", "content": "", "tool_calls": [CALC, TIME]},
    {"role": "tool", "content": CALC_RESULT},
    {"role": "tool", "content": TIME_RESULT},
    {"role": "assistant", "content": "12*7 = 84，东京现在是15:30。"},
]


def upstream_layout(turns):
    """The same conversation as upstream's files store it: tools and tool_calls as JSON strings, flat calls."""
    out = []
    for t in turns:
        t = dict(t)
        if "tools" in t:
            t["tools"] = json.dumps(t["tools"], ensure_ascii=False)
        if "tool_calls" in t:
            t["tool_calls"] = json.dumps([c["function"] for c in t["tool_calls"]], ensure_ascii=False)
        out.append(t)
    return out


def learned_text(tok, item):
    return tok.decode([t for t, l in zip(item["input_ids"], item["labels"]) if l != -100], skip_special_tokens=False)


def text_derived_mask(tok, text):
    """Independent of the dataset code: per token, 1 iff its characters lie inside an assistant reply (after
    `<|im_start|>assistant\\n`, through `<|im_end|>`), found in the rendered TEXT and mapped to tokens by offsets."""
    spans = [m.span(1) for m in re.finditer(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", text, re.S)]
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc.input_ids, [int(any(s <= a and b <= e for s, e in spans)) for a, b in enc.offset_mapping]


# ------------------------------------------------------------------------------------------------ SFT masks
def test_tool_call_sft_mask_token_by_token(tok, tmp_path):
    ds = SFTDataset(write_jsonl(tmp_path / "t.jsonl", [{"conversations": TOOL_CONV}]), tok, max_length=2048)
    item = ds[0]
    text = ds.render(TOOL_CONV)
    ids, learn = text_derived_mask(tok, text)
    assert item["input_ids"] == ids
    assert [int(l != -100) for l in item["labels"]] == learn
    assert all(l == t for l, t in zip(item["labels"], item["input_ids"]) if l != -100)
    # Exactly the two assistant turns are learned: the calls (as the template writes them) and the answer.
    calls = ('<tool_call>\n{"name": "calculate_math", "arguments": {"expression": "12*7"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}\n</tool_call>')
    assert learned_text(tok, item) == (think(tok) + calls + "<|im_end|>"
                                       + think(tok) + "12*7 = 84，东京现在是15:30。<|im_end|>")
    # Not learned: the tool results, the user question, the system prompt and the tool schemas.
    hidden = tok.decode([t for t, m in zip(ids, learn) if not m], skip_special_tokens=False)
    for part in (CALC_RESULT, TIME_RESULT, "12*7 是多少？东京几点？", "You are MiniMind.",
                 tool_listing(tok, "calculate_math")):
        assert part in hidden
    assert "<tool_response>" in hidden and "<tool_response>" not in learned_text(tok, item)
    # The learned calls parse back into calls our tools run.
    content, parsed = parse_tool_calls(learned_text(tok, item).split("<|im_end|>")[0].replace(think(tok), ""))
    assert [call_tool(c["name"], c["arguments"]) for c in parsed] == [CALC_RESULT, TIME_RESULT]


def test_plain_sft_mask_token_by_token(tok, tmp_path):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！我是MiniMind。"}, {"role": "user", "content": "1+1=?"},
            {"role": "assistant", "content": "1+1=2 😀"}]
    ds = SFTDataset(write_jsonl(tmp_path / "s.jsonl", [{"conversations": conv}]), tok)
    item = ds[0]
    ids, learn = text_derived_mask(tok, ds.render(conv))
    assert item["input_ids"] == ids and [int(l != -100) for l in item["labels"]] == learn
    assert learned_text(tok, item) == think(tok) + "你好！我是MiniMind。<|im_end|>" + think(tok) + "1+1=2 😀<|im_end|>"


def test_reasoning_content_is_learned_inside_think(tok, tmp_path):
    conv = [{"role": "user", "content": "2+3?"},
            {"role": "assistant", "content": "5", "reasoning_content": "two plus three is five"},
            {"role": "user", "content": "and 1+1?"},
            {"role": "assistant", "content": "2", "reasoning_content": ""}]  # empty = no reasoning
    ds = SFTDataset(write_jsonl(tmp_path / "r.jsonl", [{"conversations": conv}]), tok)
    item = ds[0]
    ids, learn = text_derived_mask(tok, ds.render(conv))
    assert item["input_ids"] == ids and [int(l != -100) for l in item["labels"]] == learn
    assert learned_text(tok, item) == ("<think>\ntwo plus three is five\n</think>\n\n5<|im_end|>"
                                       + think(tok) + "2<|im_end|>")
    # reasoning written inline in the content (R1 style) is learned the same way
    inline = [conv[0], {"role": "assistant", "content": "<think>\ntwo plus three is five\n</think>\n\n5"}]
    inline_item = SFTDataset(write_jsonl(tmp_path / "i.jsonl", [{"conversations": inline}]), tok)[0]
    assert learned_text(tok, inline_item) == "<think>\ntwo plus three is five\n</think>\n\n5<|im_end|>"


def test_tool_fields_as_strings_lists_or_top_level_give_identical_samples(tok, tmp_path):
    ours_layout = {"conversations": TOOL_CONV}
    upstream = {"conversations": upstream_layout(TOOL_CONV)}
    top_level = {"tools": TOOL_CONV[0]["tools"],
                 "conversations": [{k: v for k, v in TOOL_CONV[0].items() if k != "tools"}] + TOOL_CONV[1:]}
    ds = SFTDataset(write_jsonl(tmp_path / "l.jsonl", [ours_layout, upstream, top_level]), tok, max_length=2048)
    assert ds[0] == ds[1] == ds[2]
    assert '"name": "get_current_time"' in tok.decode(ds[1]["input_ids"])


def test_chat_messages_normalises_and_is_idempotent():
    messages, tools = chat_messages(upstream_layout(TOOL_CONV))
    assert tools == TOOL_CONV[0]["tools"] and "tools" not in messages[0]
    assert messages[2]["tool_calls"] == [CALC["function"], TIME["function"]]
    assert chat_messages(messages, tools) == (messages, tools)
    m, _ = chat_messages([{"role": "assistant", "content": None, "tool_calls": "", "reasoning_content": " "},
                          {"role": "user", "content": "x", "tools": None, "tool_calls": None}])
    assert m == [{"role": "assistant", "content": ""}, {"role": "user", "content": "x"}]


# ------------------------------------------------------------------------------------------------ DPO and RL
def test_dpo_with_tool_fields(tok, tmp_path):
    prompt = upstream_layout(TOOL_CONV[:2])
    rec = {"chosen": prompt + [{"role": "assistant", "content": "", "tool_calls": json.dumps([CALC["function"]])}],
           "rejected": prompt + [{"role": "assistant", "content": "I cannot compute that."}]}
    item = DPODataset(write_jsonl(tmp_path / "d.jsonl", [rec]), tok, max_length=2048)[0]
    chosen = {"input_ids": item["chosen_input_ids"], "labels": item["chosen_labels"]}
    assert learned_text(tok, chosen) == (think(tok) + '<tool_call>\n{"name": "calculate_math", "arguments": '
                                         '{"expression": "12*7"}}\n</tool_call><|im_end|>')
    assert "# Tools" in tok.decode(item["rejected_input_ids"])


def test_agent_rl_layout(tok, tmp_path):
    rec = {"conversations": [{"role": "system", "content": "", "tools": json.dumps(tool_schemas(["calculate_math"]))},
                             {"role": "user", "content": "算算7109*2920"},
                             {"role": "assistant", "content": ""}],
           "gt": ["20758280"]}
    path = write_jsonl(tmp_path / "agent.jsonl", [rec, dict(rec, gt=[42, "x"], n_calls=2)])
    ds = AgentRLDataset(path, tok)
    item = ds[0]
    assert item["messages"] == [{"role": "system", "content": ""}, {"role": "user", "content": "算算7109*2920"}]
    assert item["tools"] == tool_schemas(["calculate_math"]) and item["gt"] == ["20758280"]
    assert ds[1]["gt"] == ["42", "x"] and item["index"] == 0
    # "n_calls" (optional): how many calls the task needs (the agent reward's `calls` term); None when absent
    assert item["n_calls"] is None and ds[1]["n_calls"] == 2
    assert item["prompt"].endswith("<|im_start|>user\n算算7109*2920<|im_end|>\n<|im_start|>assistant\n"
                                   + ("<think>\n\n</think>\n\n" if is_mm3(tok) else ""))
    assert tool_listing(tok, "calculate_math") in item["prompt"]
    assert item["prompt_ids"] == tok(item["prompt"], add_special_tokens=False).input_ids
    batch = collate_lists([ds[0], ds[1]])
    assert batch["gt"] == [["20758280"], ["42", "x"]] and len(batch["messages"]) == 2
    # The RL prompt dataset reads the same file (the placeholder answer dropped, tools rendered).
    rl = RLAIFDataset(path, tok, max_length=0)[0]
    assert rl["prompt"] == item["prompt"]


@pytest.mark.parametrize("enable, ours_tail, mm3_tail", [
    (None, "<|im_start|>assistant\n", "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
    (True, "<|im_start|>assistant\n", "<|im_start|>assistant\n<think>\n"),
    (False, "<|im_start|>assistant\n<think>\n\n</think>\n\n", "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
])
def test_dataset_thinking_switch_reaches_either_template(tok, tmp_path, enable, ours_tail, mm3_tail):
    path = write_jsonl(tmp_path / "r.jsonl", [{"conversations": [{"role": "user", "content": "hi"},
                                                                 {"role": "assistant", "content": ""}]}])
    prompt = RLAIFDataset(path, tok, enable_thinking=enable)[0]["prompt"]
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n" + (mm3_tail if is_mm3(tok) else ours_tail)


# ------------------------------------------------------------------------------------------------ bad input
BAD = '[{"name": "calculate_math", "arguments": {"expression": "1"}'  # truncated JSON


@pytest.mark.parametrize("record, message", [
    ({"conversations": [{"role": "system", "content": "", "tools": BAD}, {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"}]},
     r'"conversations"\[0\]\["tools"\] is not valid JSON'),
    ({"conversations": [{"role": "user", "content": "q"},
                        {"role": "assistant", "content": "", "tool_calls": BAD}]},
     r'"conversations"\[1\]\["tool_calls"\] is not valid JSON'),
    ({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [
        {"name": "calculate_math", "arguments": '{"expression": '}]}]},
     r'"conversations"\[1\]\["tool_calls"\]\[0\] arguments are not valid JSON'),
    ({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [
        {"arguments": {}}]}]}, r'\["tool_calls"\]\[0\] must be'),
    ({"tools": "not json", "conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     r'record\["tools"\] is not valid JSON'),
    ({"tools": {"name": "f"}, "conversations": [{"role": "user", "content": "q"},
                                                {"role": "assistant", "content": "a"}]},
     r'record\["tools"\] must be a list'),
    ({"conversations": [{"role": "user", "content": "q", "tools": "[]", "tool_calls": [{"name": "f"}]},
                        {"role": "assistant", "content": "a"}]}, r' has "tool_calls", which belong on assistant'),
    ({"conversations": [{"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a", "reasoning_content": ["x"]}]},
     r'\["reasoning_content"\] must be a string'),
])
def test_invalid_tool_fields_name_file_and_line(tok, tmp_path, record, message):
    good = {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, record])
    with pytest.raises(DataFormatError, match=rf"bad\.jsonl:2: (\"conversations\"\[\d\])?{message}") as e:
        SFTDataset(path, tok)
    assert isinstance(e.value, UserError)
    assert len(SFTDataset(path, tok, skip_bad_lines=True)) == 1


def test_invalid_fields_in_dpo_rlaif_and_agent_files(tok, tmp_path):
    bad_turns = [{"role": "system", "content": "", "tools": "{oops"}, {"role": "user", "content": "q"},
                 {"role": "assistant", "content": "a"}]
    with pytest.raises(DataFormatError, match=r'd\.jsonl:1: "chosen"\[0\]\["tools"\] is not valid JSON'):
        DPODataset(write_jsonl(tmp_path / "d.jsonl", [{"chosen": bad_turns, "rejected": bad_turns}]), tok)
    with pytest.raises(DataFormatError, match=r'r\.jsonl:1: "conversations"\[0\]\["tools"\] is not valid JSON'):
        RLAIFDataset(write_jsonl(tmp_path / "r.jsonl", [{"conversations": bad_turns}]), tok)
    ok_turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]
    for gt, name in (("20", "a1"), ([], "a2"), ([True], "a3"), (None, "a4")):
        rec = {"conversations": ok_turns} if gt is None else {"conversations": ok_turns, "gt": gt}
        with pytest.raises(DataFormatError, match=rf'{name}\.jsonl:1: "gt" must be a non-empty list'):
            AgentRLDataset(write_jsonl(tmp_path / f"{name}.jsonl", [rec]), tok)
    for n, name in ((-1, "n1"), (1.5, "n2"), (True, "n3"), ("2", "n4")):
        with pytest.raises(DataFormatError, match=rf'{name}\.jsonl:1: "n_calls" .* must be a whole number >= 0'):
            AgentRLDataset(write_jsonl(tmp_path / f"{name}.jsonl", [{"conversations": ok_turns, "gt": ["1"],
                                                                     "n_calls": n}]), tok)
    with pytest.raises(DataFormatError, match=r"r2\.jsonl:1: .*gt"):
        RLAIFDataset(write_jsonl(tmp_path / "r2.jsonl", [{"conversations": ok_turns, "gt": "20"}]), tok)
    twice = {"tools": tool_schemas(["calculate_math"]),
             "conversations": [{"role": "system", "content": "", "tools": tool_schemas(["calculate_math"])}] + ok_turns}
    with pytest.raises(DataFormatError, match=r"t\.jsonl:1: tools are given twice"):
        SFTDataset(write_jsonl(tmp_path / "t.jsonl", [twice]), tok)


# ------------------------------------------------------------------------------------------------ thinking switch
def test_thinking_switches_are_read_from_the_template(tokenizer, mm3):
    assert thinking_switches(tokenizer) == ("enable_thinking",)
    assert thinking_switches(mm3) == ("open_thinking",)
    assert thinking_switches("{{ messages }}") == () and thinking_switches(None) == ()
    assert thinking_switches({"default": "{% if enable_thinking %}", "tool_use": "{{ open_thinking }}"}) \
        == ("enable_thinking", "open_thinking")


@pytest.mark.parametrize("request_fields, ours_kwargs, mm3_kwargs", [
    ({}, {}, {}),
    ({"enable_thinking": True}, {"enable_thinking": True}, {"open_thinking": True}),
    ({"enable_thinking": False}, {"enable_thinking": False}, {"open_thinking": False}),
    ({"open_thinking": True}, {"enable_thinking": True}, {"open_thinking": True}),
    ({"chat_template_kwargs": {"enable_thinking": False}}, {"enable_thinking": False}, {"open_thinking": False}),
    ({"chat_template_kwargs": {"open_thinking": True, "my_var": 1}},
     {"enable_thinking": True, "my_var": 1}, {"open_thinking": True, "my_var": 1}),
    ({"enable_thinking": True, "chat_template_kwargs": {"open_thinking": True}},
     {"enable_thinking": True}, {"open_thinking": True}),
    ({"enable_thinking": None, "chat_template_kwargs": {"enable_thinking": None}}, {}, {}),
])
def test_thinking_kwargs_map_a_request_to_the_template(tokenizer, mm3, request_fields, ours_kwargs, mm3_kwargs):
    assert thinking_kwargs(tokenizer, **request_fields) == ours_kwargs
    assert thinking_kwargs(mm3, **request_fields) == mm3_kwargs
    assert thinking_kwargs("no switch here", **request_fields) == {
        k: v for k, v in ours_kwargs.items() if k != "enable_thinking"}


def test_thinking_kwargs_render_the_same_intent_with_both_tokenizers(tokenizer, mm3):
    messages = [{"role": "user", "content": "hi"}]

    def tail(tok, **request):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                       **thinking_kwargs(tok, **request))
        return text.split("<|im_start|>assistant\n", 1)[1]

    # "answer directly": both pre-fill an empty think block
    assert tail(tokenizer, enable_thinking=False) == tail(mm3, enable_thinking=False) == "<think>\n\n</think>\n\n"
    # "think": minimind-3 opens the block for the model; ours leaves the choice to the model
    assert tail(mm3, enable_thinking=True) == tail(mm3, chat_template_kwargs={"open_thinking": True}) == "<think>\n"
    assert tail(tokenizer, open_thinking=True) == ""


@pytest.mark.parametrize("request_fields, message", [
    ({"enable_thinking": True, "open_thinking": False}, "enable_thinking=true and open_thinking=false disagree"),
    ({"enable_thinking": False, "chat_template_kwargs": {"enable_thinking": True}}, "disagree"),
    ({"enable_thinking": "yes"}, "enable_thinking must be true or false"),
    ({"chat_template_kwargs": {"open_thinking": 1}}, "chat_template_kwargs.open_thinking must be true or false"),
    ({"chat_template_kwargs": {"add_generation_prompt": False}}, "may not set add_generation_prompt"),
    ({"chat_template_kwargs": ["enable_thinking"]}, "must be an object"),
])
def test_thinking_kwargs_refuse_contradictions(tokenizer, request_fields, message):
    with pytest.raises(ChatTemplateArgumentError, match=message) as e:
        thinking_kwargs(tokenizer, **request_fields)
    assert isinstance(e.value, UserError)


# ------------------------------------------------------------------------------------------------ bundled samples
def test_sample_tool_conversations_mask_calls_not_results(tok):
    ds = SFTDataset(SAMPLE / "sft_tool.jsonl", tok, max_length=4096)
    n_calls = 0
    for i in range(len(ds)):
        rec = ds.data[i]
        item = ds[i]
        ids, learn = text_derived_mask(tok, ds.render(rec["conversations"]))
        assert item["input_ids"] == ids and [int(l != -100) for l in item["labels"]] == learn, i
        learned = learned_text(tok, item)
        messages, _ = chat_messages(rec["conversations"])
        for m in messages:
            if m["role"] == "tool":
                assert m["content"] not in learned, (i, m["content"])
            if m["role"] == "assistant":
                assert m["content"] in learned
                for call in m.get("tool_calls", []):
                    n_calls += 1
                    assert f'"name": "{call.get("function", call)["name"]}"' in learned
    assert n_calls >= 50


def test_sample_agent_rl_file_and_sample_validation(tokenizer):
    ds = AgentRLDataset(SAMPLE / "agent_rl.jsonl", tokenizer)
    assert len(ds) >= 30
    item = ds[0]
    assert [m["role"] for m in item["messages"]] == ["system", "user"] and item["tools"] and item["gt"]
    # make_sample_data.py --check: formats, and every tool result in sft_tool.jsonl is what model/tools.py
    # returns today (a tool change that would make the sample data lie fails here).
    spec = importlib.util.spec_from_file_location("make_sample_data", SAMPLE / "make_sample_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    counts = module.validate(SAMPLE)
    assert counts["sft_tool"] >= 50 and counts["agent_rl"] >= 30


# ------------------------------------------------------------------------------------------------ downloads, caches
def test_download_knows_the_minimind3_files(tmp_path, monkeypatch, capsys):
    from scripts import download_data as dd
    names = ["pretrain_t2t_mini", "pretrain_t2t", "sft_t2t_mini", "sft_t2t", "rlaif", "agent_rl", "agent_rl_math"]
    assert dd.resolve_names(["pretrain_t2t_mini,sft_t2t_mini.jsonl", "rlaif", "agent_rl", "agent_rl_math",
                             "sft_t2t", "pretrain_t2t"]) == [
        "pretrain_t2t_mini", "sft_t2t_mini", "rlaif", "agent_rl", "agent_rl_math", "sft_t2t", "pretrain_t2t"]
    for name in names:
        assert dd.target_path(name, tmp_path) == tmp_path / f"{name}.jsonl"
    assert dd.resolve_names(["rlaif_mini"]) == ["rlaif-mini"], "MiniMind2's file keeps its name"
    assert dd.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{n}.jsonl" in listing for n in names)
    fetched = []

    def fake_fetch(source, filename, out_dir, force=False):  # no network in tests
        fetched.append(filename)
        (out_dir / filename).write_text("{}\n")
        return out_dir / filename

    monkeypatch.setattr(dd, "fetch", fake_fetch)
    assert dd.main(["--names", "agent_rl", "rlaif", "--out_dir", str(tmp_path)]) == 0
    assert fetched == ["agent_rl.jsonl", "rlaif.jsonl"]


def test_caches_are_written_atomically(tokenizer, tmp_path, monkeypatch):
    """The token cache, its index and the JSONL index go through model/atomic_io (no temp files left)."""
    import dataset.lm_dataset as lm
    written = []
    real = lm.atomic_write
    monkeypatch.setattr(lm, "atomic_write",
                        lambda path, *a, **k: written.append(Path(path).suffix) or real(path, *a, **k))
    monkeypatch.setattr(lm, "CACHE_DIR", tmp_path / "cache")
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": f"document {i} " * 5} for i in range(20)])
    PackedPretrainDataset(path, tokenizer, max_length=16, cache_dir=tmp_path / "tokens")
    assert written == [".npz", ".bin", ".npy"]
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


# ------------------------------------------------------------------------------------------------ SFT augmentations
def augment_records(n):
    """Plain conversations (the augmentations' targets), and every 4th one with a system prompt or tools (never
    given another system prompt); every 3rd has a second exchange (several empty think blocks, dropped together)."""
    out = []
    for i in range(n):
        conv = [{"role": "user", "content": f"问题 {i}"}, {"role": "assistant", "content": f"回答 {i}"}]
        if i % 3 == 0:
            conv += [{"role": "user", "content": f"Follow-up {i}?"}, {"role": "assistant", "content": f"Yes {i}."}]
        if i % 8 == 1:
            conv = [{"role": "system", "content": "Be terse."}] + conv
        if i % 8 == 5:
            conv = [{"role": "system", "content": "", "tools": tool_schemas(["calculate_math"])}] + conv
        out.append({"conversations": conv})
    return out


def augment_args(tok, *argv):
    import argparse
    from dataset.lm_dataset import add_augment_args
    args = add_augment_args(argparse.ArgumentParser()).parse_args(list(argv))
    args.seed = 42
    return args


def test_augmentations_follow_the_template_defaults_and_are_seeded(tok, tmp_path):
    """Unset flags: upstream's 0.8 (drop the empty think blocks) and 0.2 (add a system prompt) with upstream's
    minimind-3 template, 0 and 0 with ours (samples exactly as without the flags). Each sample's draw depends on
    (seed, epoch, index) only: two datasets agree, the next epoch draws afresh, and one flag never changes what
    the other draws. No system prompt is added where there are tools or already is one."""
    from dataset.lm_dataset import EMPTY_THINK, SYSTEM_PROMPTS, augment_kwargs
    path = write_jsonl(tmp_path / "sft.jsonl", augment_records(160))
    kw = augment_kwargs(augment_args(tok), tok)
    assert (kw["drop_empty_think"], kw["add_system_ratio"]) == ((0.8, 0.2) if is_mm3(tok) else (0.0, 0.0))
    ds, plain = SFTDataset(path, tok, 1024, **kw), SFTDataset(path, tok, 1024)
    texts = [tok.decode(ds[i]["input_ids"]) for i in range(len(ds))]
    if not is_mm3(tok):
        assert all(ds[i] == plain[i] for i in range(len(ds)))
    eligible = [i for i in range(len(ds)) if i % 8 not in (1, 5)]
    added = [i for i, t in enumerate(texts) if any(p in t for p in SYSTEM_PROMPTS)]
    assert set(added) <= set(eligible)
    assert all(texts[i].count("<|im_start|>system") == 1 for i in range(len(ds)) if i % 8 in (1, 5))
    kept = [i for i, t in enumerate(texts) if EMPTY_THINK in t]
    if is_mm3(tok):
        assert 0.1 < len(added) / len(eligible) < 0.3 and 0.1 < len(kept) / len(ds) < 0.3
        assert len({p for p in SYSTEM_PROMPTS if any(p in texts[i] for i in added)}) >= 5  # picked at random
        assert all(t.count(EMPTY_THINK) in (0, 2 if i % 3 == 0 else 1) for i, t in enumerate(texts))  # all or none
        # what a dropped sample learns: the answer right after the header, the block gone from text and labels
        i = next(i for i in eligible if i not in kept and i not in added)
        assert learned_text(tok, ds[i]).startswith(f"回答 {i}<|im_end|>")
    else:
        assert added == kept == []
    # seeded per (seed, epoch, index); a flag's value does not move the other flag's draws
    again = SFTDataset(path, tok, 1024, **kw)
    assert [again[i] for i in range(len(ds))] == [ds[i] for i in range(len(ds))]
    both = SFTDataset(path, tok, 1024, **{**kw, "drop_empty_think": 0.8, "add_system_ratio": 0.2})
    only_system = SFTDataset(path, tok, 1024, **{**kw, "drop_empty_think": 0.0, "add_system_ratio": 0.2})
    with_system = [i for i in range(len(ds)) if any(p in tok.decode(only_system[i]["input_ids"]) for p in SYSTEM_PROMPTS)]
    assert with_system == [i for i in eligible if both.draw(i).system] and len(with_system) > 10
    draws = lambda d: [d.draw(i) for i in range(len(d))]  # noqa: E731
    first = draws(both)
    both.set_epoch(1)
    assert draws(both) != first  # the next epoch draws afresh
    both.set_epoch(0)
    assert draws(both) == first
    assert draws(SFTDataset(path, tok, 1024, drop_empty_think=0.8, add_system_ratio=0.2, seed=7)) != first


def test_augmentation_flags_apply_with_our_template_too(tokenizer, tmp_path):
    """Set explicitly, both work with our tokenizer: every eligible sample gets a system prompt at 1.0, and an
    empty think block written into the data is dropped at 1.0 (our template renders none of its own)."""
    from dataset.lm_dataset import EMPTY_THINK, SYSTEM_PROMPTS, augment_kwargs
    recs = augment_records(16)
    recs[0]["conversations"][1]["content"] = EMPTY_THINK + "回答 0"
    path = write_jsonl(tmp_path / "sft.jsonl", recs)
    kw = augment_kwargs(augment_args(tokenizer, "--add_system_ratio", "1", "--drop_empty_think", "1"), tokenizer)
    ds = SFTDataset(path, tokenizer, 1024, **kw)
    texts = [tokenizer.decode(ds[i]["input_ids"]) for i in range(len(ds))]
    assert [i for i, t in enumerate(texts) if any(p in t for p in SYSTEM_PROMPTS)] == \
        [i for i in range(16) if i % 8 not in (1, 5)]
    assert EMPTY_THINK not in texts[0] and "<|im_start|>assistant\n回答 0<|im_end|>" in texts[0]
    assert EMPTY_THINK in tokenizer.decode(SFTDataset(path, tokenizer, 1024)[0]["input_ids"])
    with pytest.raises(SystemExit):
        augment_args(tokenizer, "--add_system_ratio", "1.5")


def test_dpo_pair_shares_one_draw(tok, tmp_path):
    """A DPO pair gets one draw: chosen and rejected keep the same (possibly augmented) prompt, so the loss still
    compares two responses to the same text."""
    from dataset.lm_dataset import SYSTEM_PROMPTS
    pairs = [{"chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"good {i}"}],
              "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"bad {i}"}]}
             for i in range(40)]
    ds = DPODataset(write_jsonl(tmp_path / "dpo.jsonl", pairs), tok, 1024, drop_empty_think=0.5, add_system_ratio=0.5)
    n_system = 0
    for i in range(len(ds)):
        c, r = tok.decode(ds[i]["chosen_input_ids"]), tok.decode(ds[i]["rejected_input_ids"])
        assert c.replace(f"good {i}", "") == r.replace(f"bad {i}", "")
        n_system += any(p in c for p in SYSTEM_PROMPTS)
    assert 0 < n_system < len(ds)
