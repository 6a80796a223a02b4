"""scripts/make_tool_data.py: seeded tool-use data that covers every tool, keeps its eval held out, and loads in
the datasets and the eval as they are."""
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import scripts.make_tool_data as mtd  # noqa: E402
from dataset.lm_dataset import AgentRLDataset, SFTDataset  # noqa: E402
from model.tools import TOOL_NAMES, run_tool  # noqa: E402
from scripts.eval_toolcall import call_key, load_tasks  # noqa: E402

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def data():
    return mtd.generate(seed=7, n_sft=1500, n_rl=300, n_eval=120)


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = mtd.generate(3, 50, 20, 20), mtd.generate(3, 50, 20, 20), mtd.generate(4, 50, 20, 20)
    assert json.dumps(a) == json.dumps(b)
    assert json.dumps(a) != json.dumps(c)


def test_every_tool_both_languages_and_every_kind_of_conversation(data):
    sft, rl, evals = data
    called = Counter(c["function"]["name"] for r in sft for m in r["conversations"] for c in m.get("tool_calls", []))
    assert set(called) == set(TOOL_NAMES), set(TOOL_NAMES) - set(called)
    users = [next(m["content"] for m in r["conversations"] if m["role"] == "user") for r in sft]
    zh = sum(bool(CJK.search(u)) for u in users) / len(users)
    assert 0.3 < zh < 0.7  # both languages, neither dominating
    per_turn = [len(m["tool_calls"]) for r in sft for m in r["conversations"] if m.get("tool_calls")]
    turns = [sum(1 for m in r["conversations"] if m.get("tool_calls")) for r in sft]
    assert max(per_turn) == 2 and max(turns) == 2  # parallel calls, and chained calls over two turns
    assert any(not t for t in turns)  # questions that need no tool
    errors = [m for r in sft for m in r["conversations"] if m["role"] == "tool" and '"error"' in m["content"]]
    assert errors  # a failing call, answered gracefully (the final turn is an answer, not another call)
    assert len(set(users)) > 0.8 * len(users)  # numbers are drawn: repeats only where tables are finite (cities)


def test_every_tool_result_is_the_tools_real_output_and_every_answer_quotes_it(data):
    sft, _, _ = data
    for r in sft:
        conv = r["conversations"]
        calls = [c["function"] for m in conv for c in m.get("tool_calls", [])]
        results = [m["content"] for m in conv if m["role"] == "tool"]
        assert [run_tool(c["name"], c["arguments"])[0] for c in calls] == results
        final = conv[-1]
        assert final["role"] == "assistant" and not final.get("tool_calls") and final["content"]
        for res in results:
            value = json.loads(res)
            for key in ("result", "converted", "translated_text", "characters"):
                if key in value and r is not None:
                    assert str(value[key]) in final["content"] or key == "result" and "天气" in final["content"]


def test_eval_is_held_out_from_training(data):
    sft, rl, evals = data
    gold = {call_key(c["name"], c["arguments"]) for e in evals for c in e["calls"]}
    train_calls = {call_key(c["function"]["name"], c["function"]["arguments"])
                   for r in sft for m in r["conversations"] for c in m.get("tool_calls", [])}
    # the finite tables (weather cities, phrases, time zones) repeat by design; every drawn-number call must not
    numeric = {k for k in gold if any(ch.isdigit() for ch in k)}
    assert numeric and not numeric & train_calls
    questions = {e["question"] for e in evals}
    assert not questions & {m["content"] for r in sft + rl for m in r["conversations"] if m["role"] == "user"}
    # held-out templates: an eval question's template (its text without the drawn parts) is never a training one
    for family, (zh, en) in mtd.T.items():
        for lang in (zh, en):
            assert not set(mtd.split_templates(lang, "eval")) & set(mtd.split_templates(lang, "train"))


def test_files_load_in_the_datasets_and_the_eval(data, tmp_path, tokenizer):
    sft, rl, evals = data
    for name, recs in (("sft.jsonl", sft), ("agent_rl.jsonl", rl), ("eval.jsonl", evals)):
        mtd.write_jsonl(tmp_path / name, recs)
    ds = SFTDataset(tmp_path / "sft.jsonl", tokenizer, max_length=768)
    assert all(any(x != -100 for x in ds[i]["labels"]) for i in range(0, len(ds), 50))
    agent = AgentRLDataset(tmp_path / "agent_rl.jsonl", tokenizer)
    item = agent[0]
    assert item["gt"] and item["n_calls"] >= 1 and item["tools"]
    tasks = load_tasks(tmp_path / "eval.jsonl")  # every gold call runs, every answer is well formed
    assert len(tasks) == 120 and {t.id.split("-")[0] for t in tasks} >= {"calc", "unit", "fx", "chat"}


def test_bare_share_drops_the_system_prompt_and_tool_list():
    sft, _, _ = mtd.generate(5, 200, 0, 10, bare_share=1.0)
    assert all(r["conversations"][0]["role"] == "user" for r in sft)
    sft, _, _ = mtd.generate(5, 200, 0, 10, bare_share=0.0)
    assert all(r["conversations"][0]["role"] == "system" and r["conversations"][0]["tools"] for r in sft)


def test_gsm8k_becomes_calculator_tasks(tmp_path):
    src = tmp_path / "gsm8k.jsonl"
    src.write_text(json.dumps({"question": "2+3?", "answer": "2+3=5\n#### 5"}) + "\n", encoding="utf-8")
    mtd.main(["--from_gsm8k", str(src), "--out_dir", str(tmp_path)])
    rec = json.loads((tmp_path / "agent_gsm8k.jsonl").read_text(encoding="utf-8"))
    assert rec["gt"] == ["5"] and rec["conversations"][1] == {"role": "user", "content": "2+3?"}
    assert "calculate_math" in rec["conversations"][0]["tools"]
    src.write_text(json.dumps({"question": "q", "answer": "no final line"}) + "\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"gsm8k.jsonl:1: .*####"):
        mtd.convert_gsm8k(src)


def test_copy_texts_copy_spans_from_a_phrase_into_a_json_string(tokenizer):
    """Half the copy texts copy a span from a phrase into a JSON string, as a tool call does; there the span's first
    token differs from the phrase's (" 9" vs "9"), which is what the warm-up must teach beyond plain induction."""
    import random
    texts = [t["text"] for t in mtd.copy_texts(random.Random(0), 400)]
    into_json = []
    for t in texts:
        if " => {" in t:
            phrase, obj = t.split(" => ", 1)
            (span,) = json.loads(obj).values()
            assert span in phrase
            into_json.append((phrase, span))
    assert 0.35 < len(into_json) / len(texts) < 0.65
    first_differs = 0
    for phrase, span in into_json:
        in_phrase = tokenizer(phrase, add_special_tokens=False).input_ids
        in_json = tokenizer(json.dumps({"x": span}, ensure_ascii=False), add_special_tokens=False).input_ids
        first = tokenizer(span, add_special_tokens=False).input_ids[0]
        # the span's first token as the JSON string holds it is not found as such in the phrase, for some spans
        first_differs += first in in_json and first not in in_phrase
    assert first_differs > 0.1 * len(into_json)
