"""scripts/eval_toolcall.py: scoring on fixed model outputs, the task file (ours, and malformed ones), and whole
runs: local batched decoding and our server over HTTP, with a scripted model that calls a tool and then answers."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import SAMPLE, PromptScriptedLM, write_jsonl  # noqa: E402
from model.errors import run_main  # noqa: E402
from scripts import eval_toolcall as ev  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CALC = {"id": "calc", "question": "What is 6*7?", "tools": ["calculate_math", "unit_converter"],
        "calls": [{"name": "calculate_math", "arguments": {"expression": "6*7"}}], "answer": ["42"]}
HELLO = {"id": "hello", "question": "Hello!", "tools": ["calculate_math"], "calls": [], "answer": None}


def call(name, args):
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


def fixed_policy(first, then="The answer is 42."):
    """A model with fixed outputs (a model/tool_loop.py Policy: open episodes -> one Turn each): `first` until a
    tool result is in the episode's conversation, then `then`."""
    def policy(episodes):
        return [ev.turn_from_text(then if any(m["role"] == "tool" for m in ep.messages) else first)
                for ep in episodes]
    policy.thinking = None  # evaluate() passes a policy's thinking switch to its episodes
    return policy


def scores(first, then="The answer is 42.", task=CALC, max_turns=4):
    result = ev.evaluate([ev.parse_task(task, "t:1")], fixed_policy(first, then), max_turns, log=lambda *a: None)
    return result["tasks"][0]["scores"], result["tasks"][0]


# ------------------------------------------------------------------------------------------------ scoring
def test_all_correct():
    s, rec = scores(call("calculate_math", {"expression": "6 * 7"}), "6*7 = 42。")
    assert s == {"attempts": 1, "valid": 1, "turns": 2, "finished": True, "answer_ok": True, "right_tool": True,
                 "args_exact": True, "result_match": True}
    assert rec["turns"][0]["results"] == [{"name": "calculate_math", "arguments": '{"expression": "6 * 7"}',
                                           "result": '{"result": "42"}', "ok": True}]
    assert rec["final"] == "6*7 = 42。"


def test_wrong_tool_bad_json_wrong_args_wrong_answer():
    s, _ = scores(call("unit_converter", {"value": 6, "from_unit": "km", "to_unit": "m"}), "I do not know.")
    assert (s["valid"], s["right_tool"], s["args_exact"], s["result_match"], s["answer_ok"]) == (
        1, False, False, False, False)
    # bad JSON: an attempt that is not a valid call; the broken text is the (wrong) final answer
    s, rec = scores('<tool_call>\n{"name": "calculate_math", "arguments": {"expression": }\n</tool_call>')
    assert (s["attempts"], s["valid"], s["turns"], s["right_tool"], s["answer_ok"]) == (1, 0, 1, False, False)
    assert rec["final"].startswith("<tool_call>")
    # arguments that are not an object are not a valid call either
    s, _ = scores('<tool_call>{"name": "calculate_math", "arguments": "6*7"}</tool_call>')
    assert (s["attempts"], s["valid"]) == (1, 0)
    # wrong arguments: right tool, wrong call, wrong result
    s, _ = scores(call("calculate_math", {"expression": "6*8"}), "48")
    assert (s["right_tool"], s["args_exact"], s["result_match"], s["answer_ok"]) == (True, False, False, False)
    # other arguments with the same result: not an exact match, but the result matches
    s, _ = scores(call("calculate_math", {"expression": "7*6"}))
    assert (s["args_exact"], s["result_match"], s["answer_ok"]) == (False, True, True)
    # a right call and a wrong answer
    s, _ = scores(call("calculate_math", {"expression": "6*7"}), "It is 41.")
    assert (s["args_exact"], s["answer_ok"]) == (True, False)
    # a retry after a failed call: the right tool, but not the gold calls
    s, _ = scores(call("calculate_math", {"expression": "6*7"}) + call("calculate_math", {"expr": "6*7"}))
    assert (s["attempts"], s["right_tool"], s["args_exact"], s["result_match"]) == (2, True, False, True)


def test_no_tool_tasks_and_unfinished_episodes():
    s, _ = scores("Hi! How can I help?", task=HELLO)
    assert s == {"attempts": 0, "valid": 0, "turns": 1, "finished": True, "answer_ok": True, "no_tool_ok": True}
    s, _ = scores(call("calculate_math", {"expression": "1+1"}), "Hi!", task=HELLO)
    assert s["no_tool_ok"] is False and s["answer_ok"] is True
    # a model that never stops calling: max_turns turns, not finished, no answer
    s, rec = scores(call("calculate_math", {"expression": "6*7"}), call("calculate_math", {"expression": "6*7"}),
                    max_turns=3)
    assert (s["turns"], s["finished"], s["answer_ok"], s["attempts"]) == (3, False, False, 3)
    assert rec["final"] == ""


def test_summary_rates():
    rows = [scores(call("calculate_math", {"expression": "6*7"}), "42")[0],          # all right
            scores(call("calculate_math", {"expression": "6*8"}), "48")[0],          # wrong args and answer
            scores("<tool_call>{bad</tool_call>")[0],                                # bad JSON
            scores("Hi!", task=HELLO)[0]]                                             # no tool needed
    m = ev.summarize(rows)
    assert m["tasks"] == 4 and m["call_attempts"] == 3 and m["valid_json"] == pytest.approx(2 / 3)
    assert (m["right_tool"], m["n_right_tool"]) == (pytest.approx(2 / 3), 3)
    assert m["args_exact"] == m["result_match"] == pytest.approx(1 / 3)
    assert (m["no_tool_ok"], m["n_no_tool_ok"]) == (1.0, 1)
    assert m["answer_acc"] == 0.5 and m["finished"] == 1.0 and m["mean_turns"] == pytest.approx(6 / 4)
    assert "valid JSON calls" in ev.table(m) and "66.7%" in ev.table(m)


def test_argument_and_answer_normalisation():
    key = ev.call_key
    assert key("get_exchange_rate", {"to_currency": "CNY", "from_currency": "usd"}) == \
        key("get_exchange_rate", {"from_currency": "USD", "to_currency": "CNY", "amount": 1.0})  # default filled
    assert key("unit_converter", {"value": 3, "from_unit": "kg", "to_unit": "pound"}) == \
        key("unit_converter", {"value": "3.0", "from_unit": " KG", "to_unit": "pound"})
    assert key("unit_converter", {"value": 3, "from_unit": "kg", "to_unit": "pound"}) != \
        key("unit_converter", {"value": 3.5, "from_unit": "kg", "to_unit": "pound"})
    ok = ev.answer_matches
    assert ok("总共 1,081 元", ["1081"]) and ok("43.40", [43.4]) and ok("-762", ["-762"])
    assert not ok("43.41", [43.4]) and not ok("no number", ["42"])
    assert ok("It says: Happy  Birthday!", ["happy birthday"]) and not ok("生日快乐", ["Happy birthday"])
    assert ok("北京28°C，成都18°C", [["28", "18"]]) and not ok("北京28°C", [["28", "18"]])
    assert ok("anything", None) and not ok("  ", None)
    assert ok("1.26", ["9", "1.26"])  # any alternative


# ------------------------------------------------------------------------------------------------ task files
def test_shipped_tasks_are_consistent_and_held_out():
    tasks = ev.load_tasks(ev.DEFAULT_TASKS)
    assert len(tasks) >= 40 and len({t.id for t in tasks}) == len(tasks)
    assert {c["name"] for t in tasks for c in t.calls} == set(ev.TOOL_NAMES)  # every tool is exercised
    assert any(len(t.calls) > 1 for t in tasks) and any(not t.calls for t in tasks)
    for t in tasks:  # the gold calls' results hold the gold answer (what a perfect model would read and say)
        if t.calls and t.answer is not None:
            results = " ".join(ev.run_tool(c["name"], c["arguments"])[0] for c in t.calls)
            assert ev.answer_matches(results, t.answer), t.id
    # held out: no question is a prompt of the tool SFT or agent-RL sample data
    seen = set()
    for name in ("sft_tool.jsonl", "agent_rl.jsonl"):
        if (SAMPLE / name).is_file():
            for line in (SAMPLE / name).read_text(encoding="utf-8").splitlines():
                seen |= {m["content"].strip() for m in json.loads(line)["conversations"] if m["role"] == "user"}
    assert seen and not seen & {t.question.strip() for t in tasks}


@pytest.mark.parametrize("line,message", [
    ('{"question": "hi", ', "invalid JSON"),
    ('{"tools": ["calculate_math"]}', '"question" must be'),
    ('{"question": "q", "tools": ["calculator"]}', "unknown tool(s) calculator"),
    ('{"question": "q", "tools": ["calculate_math"], "calls": [{"name": "unit_converter"}]}', "not among"),
    ('{"question": "q", "calls": [{"name": "calculate_math", "arguments": {"expression": "1/0"}}]}',
     "fails when run"),
    ('{"question": "q", "answer": [true]}', '"answer" must be'),
    ('[1, 2]', "must be a JSON object"),
])
def test_bad_task_lines_name_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "tasks.jsonl", [CALC, line])
    with pytest.raises(ev.UserError) as e:
        ev.load_tasks(path)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value), str(e.value)


def test_bad_task_file_is_one_error_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "tasks.jsonl", [CALC, '{"question": 3}'])
    with pytest.raises(SystemExit) as e:
        run_main(ev.main, ["--tasks", str(path), "--base_url", "http://127.0.0.1:9/v1"])
    assert e.value.code == 2
    assert capsys.readouterr().err == f'error: {path}:2: "question" must be a non-empty string\n'


# ------------------------------------------------------------------------------------------------ whole runs
REPLIES = [call("calculate_math", {"expression": "6*7"}), "6*7 = 42.", "Hello! I am MiniMind.",
           call("get_current_time", {"timezone": "Asia/Tokyo"})]


def scripted_model(tokenizer):
    """Calls the calculator for 6*7, answers once the result is in, greets otherwise, and for a question about
    Tokyo calls get_current_time forever (an episode that never finishes)."""
    def choose(ids):
        prompt = tokenizer.decode([t for t in ids if t != 0])
        if "Time in Tokyo?" in prompt:
            return 3
        if "<tool_response>" in prompt:
            return 1
        return 0 if "6*7" in prompt else 2
    return PromptScriptedLM([tokenizer(r, add_special_tokens=False).input_ids for r in REPLIES],
                            tokenizer.eos_token_id, choose)


TASKS = [CALC, HELLO, {**CALC, "id": "calc2", "question": "6*7 equals what?"},
         {"id": "tokyo", "question": "Time in Tokyo?", "tools": ["get_current_time"],
          "calls": [{"name": "get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}], "answer": ["15:30"]}]


def check_run(result):
    by_id = {t["id"]: t for t in result["tasks"]}
    assert by_id["calc"]["final"] == by_id["calc2"]["final"] == "6*7 = 42."
    assert by_id["calc"]["scores"]["args_exact"] and by_id["calc"]["scores"]["answer_ok"]
    assert by_id["hello"]["scores"]["no_tool_ok"] and by_id["hello"]["scores"]["turns"] == 1
    assert by_id["tokyo"]["scores"]["finished"] is False and by_id["tokyo"]["scores"]["turns"] == 3
    m = result["metrics"]
    # tokyo: the right tool, but called three times for one gold call
    assert (m["valid_json"], m["right_tool"], m["args_exact"], m["answer_acc"]) == (1.0, 1.0, pytest.approx(2 / 3), 0.75)
    assert m["mean_turns"] == pytest.approx((2 + 1 + 2 + 3) / 4)


def test_local_batched_run(tokenizer):
    tasks = [ev.parse_task(t, f"t:{i}") for i, t in enumerate(TASKS, 1)]
    policy = ev.LocalPolicy(scripted_model(tokenizer), tokenizer, max_new_tokens=64, batch_size=3)
    check_run(ev.evaluate(tasks, policy, max_turns=3, log=lambda *a: None))


def test_run_against_our_server_writes_json(tmp_path, tokenizer, capsys):
    from test_server import serve
    from scripts.serve_openai_api import create_app
    path = write_jsonl(tmp_path / "tasks.jsonl", TASKS)
    out = tmp_path / "res" / "eval.json"
    with serve(create_app(scripted_model(tokenizer), tokenizer, "scripted", max_seq_len=2048)) as url:
        ev.main(["--base_url", url + "/v1", "--tasks", str(path), "--output", str(out), "--max_turns", "3",
                 "--concurrency", "2"])
    printed = capsys.readouterr().out
    assert "final-answer accuracy" in printed and "75.0%" in printed and f"wrote {out}" in printed
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["kind"] == "eval_toolcall" and saved["settings"]["max_turns"] == 3
    check_run(saved)
    calc = next(t for t in saved["tasks"] if t["id"] == "calc")
    assert calc["turns"][0]["calls"] == [{"name": "calculate_math", "arguments": '{"expression": "6*7"}'}]
    assert calc["turns"][0]["results"][0]["result"] == '{"result": "42"}' and calc["where"].endswith(":1")


# ------------------------------------------------------------------------------------------------ learning
def test_tool_sft_teaches_a_tiny_model_to_call_tools(tmp_path):
    """Tool-call SFT end to end on our data: train_full_sft.py on 4 conversations of dataset/sample/sft_tool.jsonl
    (tools on the system message, an assistant `tool_calls` turn, the tool result, the answer), from random
    weights, then eval_toolcall.py on the same 4 questions: each first turn is a valid call of the right tool
    with the right arguments, and the answer follows the real tool result. The model memorises; what this shows
    is that the data format, the loss mask, the template and the call parser fit together (the quick start
    scores held-out tasks: README "Tool use")."""
    from helpers import TINY, run_script, run_trainer
    records, tasks = [], []
    for line in (SAMPLE / "sft_tool.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        system, user = rec["conversations"][:2]
        steps = [m["tool_calls"] for m in rec["conversations"] if m.get("tool_calls")]
        if isinstance(system["tools"], str) or len(steps) != 1 or isinstance(steps[0], str) or len(steps[0]) != 1:
            continue  # single-call conversations (the JSON-string spelling is covered by the dataset tests)
        fn = steps[0][0]["function"]
        # The eval offers model/tools.py's schemas: train on the same ones, so that the prompts it memorises are
        # the prompts it is asked (the sample file may carry older descriptions of the same tools).
        system["tools"] = ev.tool_schemas([t["function"]["name"] for t in system["tools"]])
        records.append(rec)
        tasks.append({"id": f"t{len(tasks)}", "question": user["content"], "system": system["content"],
                      "tools": [t["function"]["name"] for t in system["tools"]],
                      "calls": [{"name": fn["name"], "arguments": fn["arguments"]}], "answer": None})
        if len(tasks) == 4:
            break
    assert len({t["calls"][0]["name"] for t in tasks}) > 1, "pick conversations of different tools"
    run_trainer("train_full_sft.py", "--data_path", write_jsonl(tmp_path / "tool_sft.jsonl", records),
                "--from_weight", "none", "--epochs", 80, "--batch_size", 1, "--learning_rate", 6e-3,
                "--max_seq_len", 1024, "--log_interval", 80, "--save_interval", 0, tmp=tmp_path)
    run_script([ROOT / "scripts" / "eval_toolcall.py", "--weight", "full_sft", "--save_dir", tmp_path / "out", *TINY,
                "--device", "cpu", "--dtype", "float32", "--tasks", write_jsonl(tmp_path / "tasks.jsonl", tasks),
                "--max_turns", 2, "--max_new_tokens", 64, "--output", tmp_path / "eval.json"], cwd=tmp_path)
    result = json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    m = result["metrics"]
    assert (m["call_attempts"], m["valid_json"], m["right_tool"], m["args_exact"]) == (4, 1.0, 1.0, 1.0), m
    for task, rec in zip(result["tasks"], records):
        assert task["final"] == rec["conversations"][-1]["content"]  # the answer that uses the tool's result
