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
from model.tools import (TOOL_NAMES, TOOLS, UnknownToolError, call_tool, normalize_arguments,  # noqa: E402
                         parse_tool_call_json, parse_tool_calls, run_tool, tool_schemas)


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
    # superscript exponents after a number or a closing parenthesis; a run of them is one exponent
    ("3²", "9"), ("(2+1)³", "27"), ("（2＋1）³", "27"), ("2·3²", "18"), ("-3²", "-9"), ("3 ²", "9"),
    ("2¹⁰", "1024"), ("10⁻³", "0.001"), ("2³²", "4294967296"),
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
    ("x²", "invalid character '²'"),                      # a superscript after a name is not an exponent here
    ("²", "invalid character '²'"),
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


@pytest.mark.parametrize("tool, argument, others", [
    ("unit_converter", "value", {"from_unit": "km", "to_unit": "m"}),
    ("get_exchange_rate", "amount", {"from_currency": "USD", "to_currency": "EUR"}),
])
@pytest.mark.parametrize("huge", [10 ** 400, -10 ** 400, 10 ** 16, 1e308, "1e308", "1" * 400],
                         ids=["10**400", "-10**400", "10**16", "1e308", "'1e308'", "'111...'(400)"])
def test_huge_numbers_are_a_clear_error_not_an_internal_one(tool, argument, others, huge):
    """An int too big for a float used to reach math.isfinite and come back as "internal error ...
    OverflowError"."""
    text, ok = run_tool(tool, {argument: huge, **others})
    assert not ok and json.loads(text) == {"error": f"{argument} must be a finite number below 1e15"}


def test_random_number_is_reproducible_and_within_its_bounds():
    def draw(arguments):
        return json.loads(call_tool("random_number", arguments))
    # Pinned: the number is a SHA-256 hash of the bounds, the same on every run, machine and Python version
    # (PYTHONHASHSEED does not enter). A change here changes every recorded reward and episode.
    assert draw({}) == {"result": 28, "min": 0, "max": 100}
    assert draw({"min": 1, "max": 6}) == {"result": 3, "min": 1, "max": 6}
    assert draw({"min": "1", "max": 6.0}) == draw({"min": 1, "max": 6}), "whole floats and numeric strings"
    assert draw({"min": 7, "max": 7})["result"] == 7
    results = [draw({"min": -50, "max": hi})["result"] for hi in range(-50, 150)]
    assert all(-50 <= r <= hi for r, hi in zip(results, range(-50, 150)))
    assert len(set(results)) > 50, "different calls give different-looking numbers"
    big = draw({"min": -10 ** 14, "max": 10 ** 15 - 10 ** 14})["result"]
    assert -10 ** 14 <= big <= 10 ** 15 - 10 ** 14 and isinstance(big, int)


@pytest.mark.parametrize("arguments, message", [
    ({"min": 5, "max": 1}, "min (5) must not be larger than max (1)"),
    ({"min": 1.5}, "min must be a whole number, got 1.5"),
    ({"max": "ten"}, "max must be a number, got 'ten'"),
    ({"min": True}, "min must be a number, got bool"),
    ({"min": None}, "min must be a number, got NoneType"),
    ({"max": float("inf")}, "max must be a finite number below 1e15"),
    ({"max": 10 ** 16}, "max must be a finite number below 1e15"),
    ({"max": 10 ** 400}, "max must be a finite number below 1e15"),
    ({"min": -10 ** 15, "max": 10 ** 15}, "the range is too large"),
])
def test_random_number_refuses_bad_bounds(arguments, message):
    text, ok = run_tool("random_number", arguments)
    assert not ok and message in json.loads(text)["error"]


@pytest.mark.parametrize("text, characters, words", [
    ("Hello, world!", 13, 2),
    ("我喜欢Python编程。", 12, 6),         # 5 Chinese characters + "Python"; "。" is a character, not a word
    ("  你好，世界  \n", 5, 4),              # surrounding whitespace is not part of the text
    ("don't stop - go", 15, 3),            # a lone "-" is not a word
    ("a", 1, 1),
])
def test_text_length_counts_characters_and_words(text, characters, words):
    assert json.loads(call_tool("text_length", {"text": text})) == {"characters": characters, "words": words}


@pytest.mark.parametrize("text", ["", "   \n", None, 5, ["a"]])
def test_text_length_needs_a_text(text):
    text_out, ok = run_tool("text_length", {"text": text})
    assert not ok and json.loads(text_out) == {"error": "text must be a non-empty string"}


# ------------------------------------------------------------------------------------------------ aliases
@pytest.mark.parametrize("alias, code", [
    ("usd", "USD"), ("US Dollars", "USD"), ("dollars", "USD"), ("$", "USD"), ("美金", "USD"),
    ("yuan", "CNY"), ("Chinese Yuan", "CNY"), ("RENMINBI", "CNY"), ("块", "CNY"), ("人民币", "CNY"),
    ("euros", "EUR"), ("欧", "EUR"), ("pounds", "GBP"), ("British  Pound", "GBP"), ("Japanese Yen", "JPY"),
    ("日币", "JPY"), ("Australian dollars", "AUD"), ("Canadian dollar", "CAD"), ("Hong Kong dollars", "HKD"),
    ("Korean won", "KRW"), ("Singapore dollar", "SGD"), ("Swiss francs", "CHF"), ("roubles", "RUB"),
    ("Indian rupees", "INR"),
])
def test_currency_aliases(alias, code):
    got = normalize_arguments("get_exchange_rate", {"from_currency": alias, "to_currency": "CNY"})
    assert got["from_currency"] == code


def test_every_currency_has_an_english_and_a_chinese_name():
    english = {code for alias, code in tools.CURRENCY_ALIASES.items() if alias.isascii() and len(alias) > 3}
    chinese = {code for alias, code in tools.CURRENCY_ALIASES.items() if tools._has_cjk(alias)}
    assert english == chinese == set(tools.CNY_PER_UNIT)
    assert set(tools.CURRENCY_ALIASES.values()) <= set(tools.CNY_PER_UNIT)


@pytest.mark.parametrize("alias, unit", [
    ("kms", "km"), ("公里", "km"), ("lb.", "pound"), ("LBS", "pound"), ("hrs", "h"), ("mins", "min"),
    ("secs", "s"), ("公斤", "kg"), ("KGs", "kg"), ("Ft.", "foot"), ("公分", "cm"), ("degrees  Celsius", "celsius"),
])
def test_unit_aliases(alias, unit):
    assert normalize_arguments("unit_converter", {"value": 1, "from_unit": alias, "to_unit": unit}) \
        == {"value": 1.0, "from_unit": unit, "to_unit": unit}


# The Chinese names of the TIMEZONES cities, in TIMEZONES order ("UTC" has none).
CHINESE_TIMEZONE_CITIES = ["上海", "香港", "台北", "新加坡", "东京", "首尔", "加尔各答", "迪拜", "伦敦", "巴黎", "柏林",
                           "莫斯科", "纽约", "芝加哥", "洛杉矶", "圣保罗", "悉尼", "奥克兰"]


def test_every_known_city_has_a_time_zone():
    def zone(name):
        got = normalize_arguments("get_current_time", {"timezone": name})
        assert got is not None, name
        return got["timezone"]
    cities = [z for z in tools.TIMEZONES if "/" in z]
    for iana, chinese in zip(cities, CHINESE_TIMEZONE_CITIES, strict=True):
        assert zone(iana.split("/")[1].replace("_", " ")) == zone(chinese) == iana
    for city in [*tools.WEATHER, *tools.WEATHER_ALIASES]:
        zone(city)
    for city in ["杭州", "成都", "重庆", "Chongqing", "北京市", "Beijing City", "北京时间"]:
        assert zone(city) == "Asia/Shanghai", city
    assert zone("巴黎") == "Europe/Paris" and zone("Tokyo time") == "Asia/Tokyo" and zone("São Paulo") == \
        "America/Sao_Paulo"


@pytest.mark.parametrize("location, city", [
    ("Beijing City", "北京"), ("北京市", "北京"), (" beijing ", "北京"), ("new york city", "New York"), ("NYC", "New York"),
    ("TOKYO", "Tokyo"), ("东京", "Tokyo"), ("xi'an", "西安"),
])
def test_weather_city_aliases(location, city):
    assert normalize_arguments("get_current_weather", {"location": location}) == {"location": city}
    assert json.loads(call_tool("get_current_weather", {"location": location}))["temperature"] \
        == f"{tools.WEATHER[city][0]}°C"


# ------------------------------------------------------------------------------------------------ normalize_arguments
NORMALIZED = [
    ("calculate_math", {"expression": "  (3+4)*5 "}, {"expression": "(3+4)*5"}),
    ("calculate_math", {"expression": 7}, {"expression": "7"}),
    ("unit_converter", {"value": "8", "from_unit": "公里", "to_unit": "miles"},
     {"value": 8.0, "from_unit": "km", "to_unit": "mile"}),
    ("unit_converter", '{"value": 100, "from_unit": "°C", "to_unit": "华氏度"}',
     {"value": 100.0, "from_unit": "celsius", "to_unit": "fahrenheit"}),
    ("get_current_time", {}, {"timezone": "Asia/Shanghai"}),
    ("get_current_time", None, {"timezone": "Asia/Shanghai"}),
    ("get_current_time", {"timezone": "东京"}, {"timezone": "Asia/Tokyo"}),
    ("get_current_time", {"timezone": "america/new_york"}, {"timezone": "America/New_York"}),
    ("get_current_time", {"timezone": "utc+8"}, {"timezone": "UTC+08:00"}),
    ("get_exchange_rate", {"from_currency": "us dollars", "to_currency": "人民币"},
     {"from_currency": "USD", "to_currency": "CNY", "amount": 1.0}),
    ("get_exchange_rate", {"from_currency": "EUR", "to_currency": "jpy", "amount": "1,000"},
     {"from_currency": "EUR", "to_currency": "JPY", "amount": 1000.0}),
    ("get_current_weather", {"location": "Beijing"}, {"location": "北京"}),
    ("translate_text", {"text": " 你好世界 ", "target_language": "English"},
     {"text": "你好世界", "target_language": "english"}),
    ("translate_text", {"text": "Thank you", "target_language": "中文"},
     {"text": "Thank you", "target_language": "chinese"}),
    ("random_number", {}, {"min": 0, "max": 100}),
    ("random_number", {"min": "1", "max": 6.0}, {"min": 1, "max": 6}),
    ("text_length", {"text": " Hello, world! "}, {"text": "Hello, world!"}),
]


@pytest.mark.parametrize("name, arguments, expected", NORMALIZED)
def test_normalize_arguments_for_every_tool(name, arguments, expected):
    got = normalize_arguments(name, arguments)
    assert got == expected
    assert [type(v) for v in got.values()] == [type(v) for v in expected.values()], "floats stay floats"
    assert normalize_arguments(name, got) == got, "normalising twice changes nothing"
    if name != "get_current_weather":  # its reply echoes the city as written and speaks its language
        assert run_tool(name, got) == run_tool(name, arguments), "the same call as the tool sees it"


def test_normalize_arguments_covers_every_tool():
    assert {name for name, _, _ in NORMALIZED} == set(TOOL_NAMES)


@pytest.mark.parametrize("name, arguments", [
    ("no_such_tool", {}), (None, {}), ("calculate_math", "{not json"), ("calculate_math", {}),
    ("calculate_math", {"expression": "1/0"}), ("calculate_math", {"expression": "1", "extra": 2}),
    ("unit_converter", {"value": 1, "from_unit": "kg", "to_unit": "km"}),   # each argument alone is fine
    ("unit_converter", {"value": 1, "from_unit": "parsec", "to_unit": "km"}),
    ("unit_converter", {"value": 10 ** 400, "from_unit": "km", "to_unit": "m"}),
    ("get_current_time", {"timezone": "Mars/Olympus"}), ("get_exchange_rate", {"from_currency": "XYZ",
                                                                              "to_currency": "USD"}),
    ("get_current_weather", {"location": "Atlantis"}),
    ("translate_text", {"text": "量子色动力学", "target_language": "english"}),
    ("translate_text", {"text": "你好", "target_language": "klingon"}),
    ("random_number", {"min": 5, "max": 1}), ("text_length", {"text": "  "}),
])
def test_normalize_arguments_is_none_for_a_failing_call(name, arguments):
    assert not run_tool(name, arguments)[1]
    assert normalize_arguments(name, arguments) is None


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
        defaults = {n: p.default for n, p in signature.items() if p.default is not inspect.Parameter.empty}
        assert defaults == {n: p["default"] for n, p in params["properties"].items() if "default" in p}, fn["name"]
        # normalize_arguments reads every argument the way the tool does
        assert list(tools._READ_ARGUMENT[fn["name"]]) == list(params["properties"]), fn["name"]
        json.dumps(schema)  # serialisable for a chat template / an API response
    assert set(tools._READ_ARGUMENT) == set(TOOL_NAMES)
    # upstream's calculator is called with an `expression` argument; its data and prompts must keep working
    assert tool_schemas(["calculate_math"])[0]["function"]["parameters"]["required"] == ["expression"]


def test_new_tools_come_last_and_match_upstream():
    """Appended, so the order of the older tools (and of anything built from TOOL_NAMES) does not move; names,
    arguments, types and defaults as in upstream minimind-3's eval_toolcall.py."""
    assert TOOL_NAMES == ["calculate_math", "unit_converter", "get_current_time", "get_exchange_rate",
                          "get_current_weather", "translate_text", "random_number", "text_length"]
    rnd, length = (t["function"]["parameters"] for t in tool_schemas(["random_number", "text_length"]))
    assert {k: (p["type"], p["default"]) for k, p in rnd["properties"].items()} == \
        {"min": ("integer", 0), "max": ("integer", 100)} and rnd["required"] == []
    assert length["properties"]["text"]["type"] == "string" and length["required"] == ["text"]


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


def _regex_parse_tool_calls(text):
    """The former implementation (a lazy regex), kept as the reference the linear scan must agree with."""
    import re
    calls, kept, pos = [], [], 0
    for m in re.finditer(r"<tool_call>(.*?)</tool_call>", text, re.S):
        call = parse_tool_call_json(m.group(1).strip())
        if call is None:
            continue
        kept.append(text[pos:m.start()])
        pos = m.end()
        calls.append(call)
    kept.append(text[pos:])
    return "\n".join(part.strip() for part in kept if part.strip()), calls


CALL = '<tool_call>\n{"name": "calculate_math", "arguments": {"expression": "1+1"}}\n</tool_call>'


@pytest.mark.parametrize("text", [
    f"Let me compute.\n{CALL}\n{CALL.replace('1+1', '2*3')}\nDone.",                    # several blocks
    f"a {CALL} b <tool_call>{{bad json</tool_call> c {CALL} d",                          # bad JSON in one
    f"<tool_call> {CALL} tail",                                                            # an open inside a block
    f"{CALL}</tool_call> stray close",                                                     # a close without an open
    f"text {CALL} <tool_call>{{\"name\": \"unclosed\"}}",                                 # unclosed at the end
    "</tool_call><tool_call>", "<tool_call></tool_call>", "", "   ", "plain text",
])
def test_parse_tool_calls_agrees_with_the_regex_it_replaces(text):
    assert parse_tool_calls(text) == _regex_parse_tool_calls(text)


@pytest.mark.parametrize("text", ["<tool_call>" * 20_000, "<tool_call>{" * 20_000,
                                  "x" * 100_000 + "<tool_call>" * 20_000 + "</tool_call"],
                         ids=["bare-tags", "tags-with-json-start", "long-text-then-tags"])
def test_parse_tool_calls_is_linear_in_unclosed_tags(text):
    """The lazy regex rescanned the rest of the text from every unclosed tag: 8,192 tags took 3.7 s."""
    t0 = time.perf_counter()
    content, calls = parse_tool_calls(text)
    assert time.perf_counter() - t0 < 1.0
    assert (content, calls) == (text.strip(), [])


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
