"""model/tools.py: the sandboxed tools (hostile input included), their schemas, call_tool's error contract and the
parser of the model's <tool_call> blocks."""
import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import tools  # noqa: E402
from model.errors import UserError  # noqa: E402
from model.tools import (TOOL_NAMES, TOOLS, UnknownToolError, call_tool, parse_tool_call_json,  # noqa: E402
                         parse_tool_calls, run_tool, tool_schemas)


def calc(expression):
    return json.loads(call_tool("calculate_math", {"expression": expression}))


# ------------------------------------------------------------------------------------------------ calculator
@pytest.mark.parametrize("expression, result", [
    ("1+2*3", "7"), ("(1+2)*3", "9"), ("7109*2920", "20758280"), ("10/4", "2.5"), ("10/2", "5"), ("7//2", "3"),
    ("7%3", "1"), ("2**10", "1024"), ("2**-2", "0.25"), ("-3+ +4", "1"), ("0.1+0.2", "0.3"), ("3^2", "9"),
    ("12×3÷4", "9"), ("（1＋2）×3", "9"), ("sqrt(16)", "4"), ("sqrt(2)", "1.41421356237"), ("abs(-5)", "5"),
    ("round(3.14159, 2)", "3.14"), ("max(3, 9, 4)", "9"), ("min(3, 9, 4)", "3"), ("log(e)", "1"),
    ("log10(1000)", "3"), ("factorial(5)", "120"), ("floor(2.7)+ceil(2.1)", "5"), ("2*pi", "6.28318530718"),
    ("1e3+1", "1001"), ("2**1000 // 2**999", "2"), ("100 =", "100"), ("  42  ", "42"), (7, "7"),
])
def test_calculator_evaluates_arithmetic(expression, result):
    assert calc(expression) == {"result": result}


@pytest.mark.parametrize("expression, message", [
    ("9**9**9", "too large"),                              # would take minutes and gigabytes with eval
    ("2**1025", "too large"),
    ("10**400", "too large"),
    ("10.0**400", "too large"),
    ("1e308*10", "too large"),
    ("(2**1000)*(2**1000)", "too large"),
    ("factorial(100000)", "factorial needs"),
    ("exp(1000)", "too large"),
    ("1/0", "division by zero"),
    ("1//0", "division by zero"),
    ("5%0", "division by zero"),
    ("0**-1", "division by zero"),
    ("(-8)**(1/3)", "not a real number"),
    ("sqrt(-1)", "negative"),
    ("log(0)", "positive"),
    ("__import__('os').system('echo pwned')", "unsupported syntax"),
    ("__import__('os')", "unknown function '__import__'"),
    ("().__class__.__base__.__subclasses__()", "unsupported syntax"),
    ("(1).real", "attribute access"),
    ("abs.__call__(1)", "attribute access"),
    ("open('/etc/passwd').read()", "unsupported syntax"),
    ("eval('1')", "unknown function 'eval'"),
    ("x + 1", "unknown name 'x'"),
    ("__builtins__", "unknown name"),
    ("lambda: 1", "lambda"),
    ("[1, 2][0]", "indexing"),
    ("[x for x in range(9)]", "comprehensions"),
    ("1 if 1 else 2", "if/else"),
    ("1 < 2", "comparisons"),
    ("(y := 3)", ":="),
    ("'a' * 3", "only numbers"),
    ("True + 1", "only numbers"),
    ("1j", "only numbers"),
    ("None", "only numbers"),
    ("1 << 100", "unsupported operator"),
    ("round(1.5, ndigits=1)", "positional"),
    ("max()", "argument"),
    ("1 +", "invalid expression"),
    ("import os", "invalid expression"),
    ("", "empty"),
    ("(" * 30 + "1" + ")" * 30, "nested too deeply"),
    ("-" * 45 + "1", "nested too deeply"),
    ("+".join(["1"] * 70), "too complex"),
    ("1+" * 200 + "1", "too long"),
    ("9" * 100_000, "too long"),
])
def test_calculator_refuses_hostile_or_bad_input_with_a_message(expression, message):
    t0 = time.perf_counter()
    out = calc(expression)
    assert time.perf_counter() - t0 < 0.5, "every refusal is immediate"
    assert set(out) == {"error"} and message in out["error"], out


def test_calculator_integer_limit_is_exact_at_the_boundary():
    assert calc("2**1023")["result"] == str(2 ** 1023)
    assert "too large" in calc("2**1024")["error"]
    assert calc("2**500 * 2**400")["result"] == str(2 ** 900)


@pytest.mark.parametrize("arguments", [{"expression": [1, 2]}, {"expression": {"a": 1}}, {"expression": None},
                                       {"expression": True}])
def test_calculator_non_string_expressions(arguments):
    out = json.loads(call_tool("calculate_math", arguments))
    assert "expression must be a string" in out["error"]


def test_calculator_never_calls_eval(monkeypatch):
    import builtins

    def no_eval(*args, **kwargs):
        raise AssertionError("eval/exec must not be used")

    monkeypatch.setattr(builtins, "eval", no_eval)
    monkeypatch.setattr(builtins, "exec", no_eval)
    assert calc("(3+4)*5") == {"result": "35"}


# ------------------------------------------------------------------------------------------------ other tools
def test_unit_converter():
    def conv(value, a, b):
        return json.loads(call_tool("unit_converter", {"value": value, "from_unit": a, "to_unit": b}))
    assert conv(5, "km", "miles")["result"] == 3.10686
    assert conv(100, "°C", "华氏度")["result"] == 212
    assert conv("32", "F", "celsius")["result"] == 0
    assert conv(0, "kelvin", "celsius")["result"] == -273.15
    assert conv(3, "斤", "公斤") == {"value": 3, "from_unit": "jin", "to_unit": "kg", "result": 1.5}
    assert conv(90, "minutes", "hours")["result"] == 1.5
    assert "cannot convert kg (mass) to km (length)" in conv(1, "kg", "km")["error"]
    assert "unknown unit 'parsec'" in conv(1, "parsec", "km")["error"]
    assert "below absolute zero" in conv(-300, "c", "k")["error"]
    for bad in (True, "abc", float("nan"), float("inf"), 1e300, None, [1]):
        assert "value must be a" in conv(bad, "km", "m")["error"], bad


def test_time_uses_a_fixed_clock_and_fixed_offsets():
    got = json.loads(call_tool("get_current_time", {}))
    assert got == {"timezone": "Asia/Shanghai", "datetime": "2025-03-07 14:30:00", "weekday": "Friday",
                   "utc_offset": "+08:00"}
    assert json.loads(call_tool("get_current_time", {"timezone": "东京"}))["datetime"] == "2025-03-07 15:30:00"
    assert json.loads(call_tool("get_current_time", '{"timezone": "america/new_york"}'))["datetime"] \
        == "2025-03-07 01:30:00"
    assert json.loads(call_tool("get_current_time", {"timezone": "UTC-3:30"}))["datetime"] == "2025-03-07 03:00:00"
    assert "unknown timezone" in call_tool("get_current_time", {"timezone": "Mars/Olympus"})
    assert "-12 to +14" in call_tool("get_current_time", {"timezone": "UTC+15"})
    assert call_tool("get_current_time", {}) == call_tool("get_current_time", {}), "deterministic"


def test_exchange_weather_translation_tables():
    rate = json.loads(call_tool("get_exchange_rate", {"from_currency": "usd", "to_currency": "人民币", "amount": 100}))
    assert rate == {"from": "USD", "to": "CNY", "rate": 7.21, "amount": 100, "converted": 721}
    assert json.loads(call_tool("get_exchange_rate", {"from_currency": "CNY", "to_currency": "JPY"}))["rate"] \
        == 20.8333
    assert "unknown currency 'XYZ'" in call_tool("get_exchange_rate", {"from_currency": "XYZ", "to_currency": "USD"})
    weather = json.loads(call_tool("get_current_weather", {"location": "北京市"}))
    assert weather["temperature"] == "28°C" and weather["condition"] == "晴"
    assert json.loads(call_tool("get_current_weather", {"location": "Beijing"}))["condition"] == "sunny"
    assert "no weather data for 'Atlantis'" in call_tool("get_current_weather", {"location": "Atlantis"})
    assert json.loads(call_tool("translate_text", {"text": "你好世界", "target_language": "english"})) \
        == {"translated_text": "Hello World", "target_language": "english"}
    assert "no translation" in call_tool("translate_text", {"text": "量子色动力学", "target_language": "english"})


# ------------------------------------------------------------------------------------------------ call contract
@pytest.mark.parametrize("name, arguments, message", [
    ("no_such_tool", {}, "unknown tool 'no_such_tool'"),
    (None, {}, "unknown tool"),
    (["calculate_math"], {}, "unknown tool"),
    ("calculate_math", "{not json", "not valid JSON"),
    ("calculate_math", "[1, 2]", "must be a JSON object"),
    ("calculate_math", 42, "must be a JSON object"),
    ("calculate_math", {}, "missing required argument(s) 'expression'"),
    ("calculate_math", {"expression": "1", "extra": 2}, "unexpected argument(s) 'extra'"),
    ("unit_converter", {"value": 1, "from_unit": "km"}, "missing required argument(s) 'to_unit'"),
    ("get_exchange_rate", {"from_currency": "USD", "to_currency": "EUR", "amount": "lots"}, "amount must be"),
])
def test_bad_calls_return_an_error_string_never_raise(name, arguments, message):
    text, ok = run_tool(name, arguments)
    assert not ok and isinstance(text, str)
    assert message in json.loads(text)["error"]
    assert call_tool(name, arguments) == text


def test_arguments_as_json_string_or_dict_are_the_same():
    assert call_tool("calculate_math", '{"expression": "6*7"}') == call_tool("calculate_math", {"expression": "6*7"})
    assert run_tool("get_current_time", None) == run_tool("get_current_time", "") == run_tool("get_current_time", {})
    assert run_tool("calculate_math", {"expression": "6*7"}) == ('{"result": "42"}', True)


def test_a_bug_inside_a_tool_is_still_an_error_string(monkeypatch):
    def broken(expression):
        raise KeyError("bug")
    monkeypatch.setitem(tools._REGISTRY, "calculate_math", (broken, tools._REGISTRY["calculate_math"][1]))
    text, ok = run_tool("calculate_math", {"expression": "1"})
    assert not ok and "internal error in calculate_math" in text


def test_results_are_capped(monkeypatch):
    monkeypatch.setitem(tools._REGISTRY, "calculate_math",
                        (lambda expression: "x" * 10_000, tools._REGISTRY["calculate_math"][1]))
    assert len(call_tool("calculate_math", {"expression": "1"})) == tools.MAX_RESULT_CHARS


# ------------------------------------------------------------------------------------------------ schemas
def test_schemas_are_openai_style_and_match_the_functions():
    import inspect
    assert [t["function"]["name"] for t in TOOLS] == TOOL_NAMES
    assert {"calculate_math", "unit_converter", "get_current_time", "get_exchange_rate"} <= set(TOOL_NAMES)
    for schema in TOOLS:
        assert schema["type"] == "function"
        fn = schema["function"]
        params = fn["parameters"]
        assert params["type"] == "object" and set(params["required"]) <= set(params["properties"])
        assert fn["description"]
        signature = inspect.signature(tools._REGISTRY[fn["name"]][0]).parameters
        assert list(signature) == list(params["properties"]), fn["name"]
        required = [n for n, p in signature.items() if p.default is inspect.Parameter.empty]
        assert required == params["required"], fn["name"]
        json.dumps(schema)  # serialisable for a chat template / an API response
    # upstream's calculator is called with an `expression` argument; its data and prompts must keep working
    assert tool_schemas(["calculate_math"])[0]["function"]["parameters"]["required"] == ["expression"]


def test_tool_schemas_selection_copies_and_errors():
    assert [t["function"]["name"] for t in tool_schemas("get_current_time, calculate_math")] \
        == ["get_current_time", "calculate_math"]
    assert tool_schemas() == TOOLS and tool_schemas("all") == TOOLS
    mine = tool_schemas(["calculate_math"])
    mine[0]["function"]["name"] = "edited"
    assert TOOLS[0]["function"]["name"] == "calculate_math", "callers get copies"
    with pytest.raises(UnknownToolError, match="unknown tool.*'web_search'.*known: calculate_math") as e:
        tool_schemas(["calculate_math", "web_search"])
    assert isinstance(e.value, UserError)


# ------------------------------------------------------------------------------------------------ parsing
def test_parse_tool_calls_reads_blocks_in_order():
    text = ('Let me check both.\n<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "北京"}}\n'
            '</tool_call>\n<tool_call>\n{"name": "calculate_math", "arguments": "{\\"expression\\": \\"1+1\\"}"}\n'
            '</tool_call>')
    content, calls = parse_tool_calls(text)
    assert content == "Let me check both."
    assert calls == [{"name": "get_current_weather", "arguments": '{"location": "北京"}'},
                     {"name": "calculate_math", "arguments": '{"expression": "1+1"}'}]
    assert [json.loads(call_tool(c["name"], c["arguments"])) for c in calls] == [
        json.loads(call_tool("get_current_weather", {"location": "北京"})), {"result": "2"}]


def test_parse_tool_calls_keeps_malformed_blocks_as_content():
    text = ('<tool_call>{"name": "f"</tool_call> middle <tool_call>{"arguments": {}}</tool_call>'
            '<tool_call>\n{"name": "calculate_math"}\n</tool_call> tail <tool_call>{"name": "x"')
    content, calls = parse_tool_calls(text)
    assert calls == [{"name": "calculate_math", "arguments": "{}"}]
    assert content == ('<tool_call>{"name": "f"</tool_call> middle <tool_call>{"arguments": {}}</tool_call>\n'
                       'tail <tool_call>{"name": "x"')
    assert text.count("<tool_call>") - len(calls) == 3, "malformed and unclosed calls can be counted"
    assert parse_tool_calls("no calls here ") == ("no calls here", [])


@pytest.mark.parametrize("raw, expected", [
    ('{"name": "f", "arguments": {"a": 1}}', {"name": "f", "arguments": '{"a": 1}'}),
    ('{"name": " f ", "arguments": null}', {"name": "f", "arguments": "{}"}),
    ('{"name": "f", "arguments": "not json"}', {"name": "f", "arguments": "not json"}),
    ('{"name": ""}', None), ('{"name": 3}', None), ('["f"]', None), ("{oops", None), ("[" * 100_000, None),
])
def test_parse_tool_call_json(raw, expected):
    assert parse_tool_call_json(raw) == expected


def test_parse_agrees_with_the_template_rendering(tokenizer):
    """What our chat template writes for an assistant tool call is what parse_tool_calls reads back."""
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "unit_converter",
                                                      "arguments": {"value": 5, "from_unit": "km", "to_unit": "mile"}}},
                    {"type": "function", "function": {"name": "calculate_math", "arguments": {"expression": "2^10"}}}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    reply = text.split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>", 1)[0]
    content, calls = parse_tool_calls(reply)
    assert content == "" and [c["name"] for c in calls] == ["unit_converter", "calculate_math"]
    assert [json.loads(call_tool(c["name"], c["arguments"])).get("result") for c in calls] == [3.10686, "1024"]
