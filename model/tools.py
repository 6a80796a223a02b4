"""The tools a MiniMind may call: deterministic, sandboxed, and the same for training, eval, demo and server.

    TOOLS                              OpenAI-style schemas ({"type": "function", "function": {...}}) of every tool
    TOOL_NAMES                         their names, in order
    tool_schemas(names=None) -> list   the schemas of `names` (all by default); unknown names raise UnknownToolError
    call_tool(name, arguments) -> str  run one call; `arguments` is a dict or a JSON string. Always returns a
                                       string for the model to read: a JSON result, or {"error": "..."} for an
                                       unknown tool or bad arguments. It never raises.
    run_tool(name, arguments) -> (str, bool)
                                       the same string plus whether the call succeeded (rewards and evals count
                                       failed calls without parsing the text back)
    parse_tool_calls(text) -> (content, calls)
                                       the model's output -> its text without the <tool_call> blocks, and the
                                       calls [{"name": str, "arguments": str (JSON)}] in order
    parse_tool_call_json(raw) -> dict | None
                                       one block's JSON -> {"name", "arguments"}, None if it is not a valid call
    normalize_arguments(name, arguments) -> dict | None
                                       a call's arguments as the tool interprets them (aliases resolved, numbers
                                       as floats, defaults filled in), None if the call would fail: "公里" and
                                       "km", "8" and 8 are the same call when a reward or an eval compares calls

The tools (names and arguments as in the original MiniMind's agent data, so its data and prompts work):

    calculate_math(expression)                      arithmetic, parsed with `ast` and evaluated node by node
    unit_converter(value, from_unit, to_unit)       length, mass, volume, time, speed, temperature
    get_current_time(timezone="Asia/Shanghai")      a FIXED clock (see CLOCK_UTC) and fixed UTC offsets
    get_exchange_rate(from_currency, to_currency, amount=1)
                                                    a fixed table of rates
    get_current_weather(location)                   a fixed table of made-up weather
    translate_text(text, target_language)           a fixed phrase book
    random_number(min=0, max=100)                   a whole number from min to max, DERIVED FROM THE ARGUMENTS:
                                                    the same call gives the same number (see _draw)
    text_length(text)                               characters and words (each Chinese character is a word)

Why fixed tables and a fixed clock: a tool result must be the same on every run and every machine, so that
rewards against a `gt` list are reproducible, resumed runs see the same episodes, and tests can assert exact
strings. For the same reason random_number is not random: its number is a hash of (min, max). Nothing here
touches the network, the file system, the real clock, a random generator or `eval`.

Why the calculator is not `eval` (not even with empty builtins): `eval` of model output can reach any object
through attribute access (`().__class__.__base__.__subclasses__()`), and `9**9**9` hangs the process while
Python builds a number with 370 million digits. Here the expression is parsed with `ast`, only numbers, + - * /
// % **, unary signs, a few math functions and the constants pi and e are accepted, and every step is bounded:
input length, parenthesis depth, tree size and depth, the size of every intermediate integer (checked BEFORE a
power or product is computed), float overflow, and a wall-clock budget.
"""
import ast
import hashlib
import json
import math
import re
import time
from datetime import datetime, timedelta, timezone as _tz
from typing import Any, Callable, Dict, List, Optional, Tuple

from model.errors import UserError

MAX_RESULT_CHARS = 2048  # a tool result lands in the model's context: keep it small whatever the tool returns
MAX_QUANTITY = 1e15      # the largest value, amount or random bound a tool takes: floats are still exact there


class UnknownToolError(UserError, ValueError):
    """A tool name (e.g. in a --tools flag) that this module does not provide."""


class ToolError(Exception):
    """A bad call (wrong arguments, an expression the calculator refuses); its message is shown to the model."""


def _error(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)


def _result(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


# ================================================================================================================
# calculate_math
# ================================================================================================================
MAX_EXPRESSION_CHARS = 256
MAX_PAREN_DEPTH = 20
MAX_NODES = 120
MAX_TREE_DEPTH = 40
MAX_INT_BITS = 1024        # about 308 decimal digits; every intermediate integer stays below this
MAX_FACTORIAL = 170        # 170! is the largest factorial below the float range
TIME_BUDGET_S = 1.0       # generous: every step is already bounded, so this never trips on a busy machine

# Characters people (and models) write for the ASCII operators.
_OPERATOR_SPELLINGS = {"^": "**", "×": "*", "✕": "*", "·": "*", "÷": "/", "−": "-", "–": "-", "＋": "+",
                       "－": "-", "＊": "*", "／": "/", "（": "(", "）": ")", "，": ","}
# Superscript exponents: 3² is 3**2, (2+1)³ is (2+1)**3, 10⁻³ is 10**(-3), 2¹⁰ is 2**(10) (a run of superscript
# digits is ONE exponent). Only after a number or a closing parenthesis: elsewhere (x², +²) the character is left
# alone and the parser names it ("invalid character '²'"), which says more than the syntax error of a stray **.
_SUPERSCRIPT_RE = re.compile(r"(?<=[0-9.)])\s*(⁻?[⁰¹²³⁴⁵⁶⁷⁸⁹]+)")
_SUPERSCRIPT_DIGITS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")


def _check_real(x):
    """Every value the calculator produces passes here: finite floats, integers below MAX_INT_BITS."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ToolError("the result is not a real number")
    if isinstance(x, float) and not math.isfinite(x):
        raise ToolError("the result is too large (overflow)")
    if isinstance(x, int) and x.bit_length() > MAX_INT_BITS:
        raise ToolError(f"the result is too large (more than {MAX_INT_BITS} bits)")
    return x


def _power(base, exp):
    if isinstance(base, int) and isinstance(exp, int) and exp >= 0:
        # Estimate the size BEFORE computing: 9**9**9 would otherwise run for minutes.
        if abs(base) > 1 and exp * math.log2(abs(base)) > MAX_INT_BITS:
            raise ToolError(f"the result is too large (more than {MAX_INT_BITS} bits)")
        return base ** exp
    if abs(exp) > 10_000:
        raise ToolError("the exponent is too large")
    try:
        value = float(base) ** float(exp)
    except OverflowError:
        raise ToolError("the result is too large (overflow)") from None
    except ZeroDivisionError:
        raise ToolError("division by zero (0 to a negative power)") from None
    if isinstance(value, complex):
        raise ToolError("the result is not a real number (a fractional power of a negative number)")
    return value


def _multiply(a, b):
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
        raise ToolError(f"the result is too large (more than {MAX_INT_BITS} bits)")
    return a * b


def _divide(a, b):
    if b == 0:
        raise ToolError("division by zero")
    if isinstance(a, int) and isinstance(b, int) and a % b == 0:
        return a // b  # exact: 10/2 is 5, and big integers do not lose digits through a float
    try:
        return a / b
    except OverflowError:
        raise ToolError("the result is too large (overflow)") from None


def _floordiv(a, b):
    if b == 0:
        raise ToolError("division by zero")
    return a // b


def _mod(a, b):
    if b == 0:
        raise ToolError("division by zero (modulo by zero)")
    return a % b


_BINOPS: Dict[type, Callable] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: _multiply, ast.Div: _divide,
    ast.FloorDiv: _floordiv, ast.Mod: _mod, ast.Pow: _power,
}


def _sqrt(x):
    if x < 0:
        raise ToolError("sqrt of a negative number")
    return math.isqrt(x) if isinstance(x, int) and math.isqrt(x) ** 2 == x else math.sqrt(x)


def _log(x, base=None):
    if x <= 0 or (base is not None and (base <= 0 or base == 1)):
        raise ToolError("log needs a positive number (and a positive base other than 1)")
    return math.log(x) if base is None else math.log(x, base)


def _factorial(n):
    if not isinstance(n, int) or n < 0 or n > MAX_FACTORIAL:
        raise ToolError(f"factorial needs a whole number from 0 to {MAX_FACTORIAL}")
    return math.factorial(n)


def _round(x, digits=0):
    if not isinstance(digits, int) or not -20 <= digits <= 20:
        raise ToolError("round needs a whole number of digits from -20 to 20")
    return round(x, digits) if digits else round(x)


def _exp(x):
    if x > 700:
        raise ToolError("the result is too large (overflow)")
    return math.exp(x)


# name -> (function, smallest and largest number of arguments)
_FUNCTIONS: Dict[str, Tuple[Callable, int, int]] = {
    "sqrt": (_sqrt, 1, 1), "abs": (abs, 1, 1), "round": (_round, 1, 2), "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1), "log": (_log, 1, 2), "log10": (lambda x: _log(x, 10), 1, 1),
    "log2": (lambda x: _log(x, 2), 1, 1), "ln": (_log, 1, 1), "exp": (_exp, 1, 1), "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1), "tan": (math.tan, 1, 1), "factorial": (_factorial, 1, 1),
    "min": (min, 1, 16), "max": (max, 1, 16),
}
_CONSTANTS = {"pi": math.pi, "e": math.e}

_NODE_NAMES = {ast.Attribute: "attribute access", ast.Subscript: "indexing", ast.Lambda: "lambda",
               ast.Compare: "comparisons", ast.BoolOp: "and/or", ast.IfExp: "if/else",
               ast.ListComp: "comprehensions", ast.GeneratorExp: "comprehensions", ast.NamedExpr: ":=",
               ast.List: "lists", ast.Tuple: "tuples", ast.Dict: "dicts", ast.Set: "sets", ast.Starred: "*args",
               ast.JoinedStr: "strings", ast.Await: "await"}


def _describe(node) -> str:
    return _NODE_NAMES.get(type(node), type(node).__name__)


class _Calculator:
    def __init__(self, deadline: float):
        self.deadline = deadline

    def eval(self, node):
        if time.monotonic() > self.deadline:
            raise ToolError("the expression took too long to evaluate")
        if isinstance(node, ast.Expression):
            return self.eval(node.body)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ToolError(f"only numbers are allowed, not {type(v).__name__} {v!r}"[:120])
            return _check_real(v)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            v = self.eval(node.operand)
            return v if isinstance(node.op, ast.UAdd) else -v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = self.eval(node.left), self.eval(node.right)
            try:
                return _check_real(_BINOPS[type(node.op)](a, b))
            except OverflowError:  # e.g. a 1024-bit integer times a float
                raise ToolError("the result is too large (overflow)") from None
        if isinstance(node, ast.BinOp):
            raise ToolError(f"unsupported operator {type(node.op).__name__} (use + - * / // % **)")
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            raise ToolError(f"unknown name {node.id!r} (only the constants pi and e, and the functions "
                            f"{', '.join(_FUNCTIONS)})")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise ToolError(f"unsupported syntax: calling the result of {_describe(node.func)}")
            if node.func.id not in _FUNCTIONS:
                raise ToolError(f"unknown function {node.func.id[:40]!r} (allowed: {', '.join(_FUNCTIONS)})")
            if node.keywords:
                raise ToolError("functions take positional arguments only")
            fn, lo, hi = _FUNCTIONS[node.func.id]
            if not lo <= len(node.args) <= hi:
                raise ToolError(f"{node.func.id} takes {lo}{'' if lo == hi else f' to {hi}'} argument(s)")
            args = [self.eval(a) for a in node.args]
            try:
                return _check_real(fn(*args))
            except (ValueError, OverflowError, TypeError) as e:
                raise ToolError(f"{node.func.id}: {e}") from None
        raise ToolError(f"unsupported syntax: {_describe(node)}")


def _paren_depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest


def _tree_depth(tree) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


def clean_number(x, digits: int = 12):
    """`digits` significant digits without float noise (0.1+0.2 -> 0.3); whole floats become ints (6/3 -> 2)."""
    if isinstance(x, int):
        return x
    x = float(f"{x:.{digits}g}")
    return int(x) if x.is_integer() and abs(x) < 1e15 else x


def format_number(x) -> str:
    return str(clean_number(x))


def _expression(expression) -> str:
    """The expression as the calculator reads it: a string (a bare number is accepted too), stripped."""
    if not isinstance(expression, str):
        if isinstance(expression, bool) or not isinstance(expression, (int, float)):
            raise ToolError("expression must be a string such as \"(3 + 4) * 5\"")
        expression = str(expression)
    return expression.strip()


def evaluate_expression(expression: str):
    """The value of an arithmetic expression, or ToolError saying why it is refused."""
    expression = _expression(expression)
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is too long ({len(expression)} characters, at most {MAX_EXPRESSION_CHARS})")
    for spelled, op in _OPERATOR_SPELLINGS.items():
        expression = expression.replace(spelled, op)
    expression = _SUPERSCRIPT_RE.sub(lambda m: f"**({m.group(1).translate(_SUPERSCRIPT_DIGITS)})", expression)
    expression = expression.strip().rstrip("=").strip()
    if not expression:
        raise ToolError("the expression is empty")
    if _paren_depth(expression) > MAX_PAREN_DEPTH:
        raise ToolError(f"the expression is nested too deeply (more than {MAX_PAREN_DEPTH} levels)")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as e:
        raise ToolError(f"invalid expression ({e.msg})") from None
    except (ValueError, RecursionError, MemoryError):
        raise ToolError("invalid expression") from None
    n_nodes = sum(1 for _ in ast.walk(tree))
    if n_nodes > MAX_NODES:
        raise ToolError(f"the expression is too complex ({n_nodes} parts, at most {MAX_NODES})")
    if _tree_depth(tree) > MAX_TREE_DEPTH:
        raise ToolError(f"the expression is nested too deeply (more than {MAX_TREE_DEPTH} levels)")
    return _Calculator(time.monotonic() + TIME_BUDGET_S).eval(tree)


def calculate_math(expression: str) -> str:
    return _result({"result": format_number(evaluate_expression(expression))})


# ================================================================================================================
# unit_converter
# ================================================================================================================
# canonical unit -> (dimension, factor to the dimension's base unit). Temperature is affine: handled apart.
UNITS: Dict[str, Tuple[str, float]] = {
    "m": ("length", 1.0), "km": ("length", 1000.0), "cm": ("length", 0.01), "mm": ("length", 0.001),
    "mile": ("length", 1609.344), "yard": ("length", 0.9144), "foot": ("length", 0.3048),
    "inch": ("length", 0.0254), "nautical_mile": ("length", 1852.0), "li": ("length", 500.0),
    "kg": ("mass", 1.0), "g": ("mass", 0.001), "mg": ("mass", 1e-6), "t": ("mass", 1000.0),
    "pound": ("mass", 0.45359237), "ounce": ("mass", 0.028349523125), "jin": ("mass", 0.5),
    "l": ("volume", 1.0), "ml": ("volume", 0.001), "m3": ("volume", 1000.0), "gallon": ("volume", 3.785411784),
    "cup": ("volume", 0.2365882365),
    "s": ("time", 1.0), "min": ("time", 60.0), "h": ("time", 3600.0), "day": ("time", 86400.0),
    "week": ("time", 604800.0),
    "m/s": ("speed", 1.0), "km/h": ("speed", 1000.0 / 3600.0), "mph": ("speed", 1609.344 / 3600.0),
    "knot": ("speed", 1852.0 / 3600.0),
    "celsius": ("temperature", 0.0), "fahrenheit": ("temperature", 0.0), "kelvin": ("temperature", 0.0),
}
UNIT_ALIASES: Dict[str, str] = {
    "meter": "m", "meters": "m", "metre": "m", "metres": "m", "米": "m",
    "kilometer": "km", "kilometers": "km", "kilometre": "km", "kilometres": "km", "kms": "km", "公里": "km",
    "千米": "km",
    "centimeter": "cm", "centimeters": "cm", "centimetre": "cm", "centimetres": "cm", "厘米": "cm", "公分": "cm",
    "millimeter": "mm", "millimeters": "mm", "millimetre": "mm", "millimetres": "mm", "毫米": "mm",
    "mi": "mile", "miles": "mile", "英里": "mile", "yd": "yard", "yards": "yard", "码": "yard",
    "yds": "yard", "ft": "foot", "feet": "foot", "英尺": "foot", "in": "inch", "inches": "inch", "英寸": "inch",
    "nmi": "nautical_mile", "nautical mile": "nautical_mile", "nautical miles": "nautical_mile", "海里": "nautical_mile",
    "里": "li",
    "kilogram": "kg", "kilograms": "kg", "kgs": "kg", "kilo": "kg", "kilos": "kg", "千克": "kg", "公斤": "kg",
    "gram": "g", "grams": "g", "克": "g", "milligram": "mg", "milligrams": "mg", "毫克": "mg",
    "ton": "t", "tons": "t", "tonne": "t", "tonnes": "t", "metric ton": "t", "metric tons": "t", "吨": "t",
    "lb": "pound", "lbs": "pound", "pounds": "pound", "磅": "pound", "oz": "ounce", "ounces": "ounce",
    "盎司": "ounce", "斤": "jin",
    "liter": "l", "liters": "l", "litre": "l", "litres": "l", "升": "l", "公升": "l", "milliliter": "ml",
    "milliliters": "ml", "millilitre": "ml", "millilitres": "ml", "毫升": "ml", "cubic meter": "m3",
    "cubic meters": "m3", "立方米": "m3", "gallons": "gallon", "加仑": "gallon",
    "cups": "cup", "杯": "cup",
    "sec": "s", "secs": "s", "second": "s", "seconds": "s", "秒": "s", "minute": "min", "minutes": "min",
    "mins": "min", "分钟": "min", "hour": "h", "hours": "h", "hr": "h", "hrs": "h", "小时": "h", "钟头": "h",
    "days": "day", "天": "day", "weeks": "week", "周": "week", "星期": "week",
    "meters per second": "m/s", "米/秒": "m/s", "米每秒": "m/s", "kph": "km/h", "kmh": "km/h", "kmph": "km/h",
    "km/hr": "km/h", "公里/小时": "km/h", "千米/小时": "km/h", "公里每小时": "km/h", "千米每小时": "km/h",
    "miles per hour": "mph", "英里/小时": "mph", "knots": "knot", "节": "knot",
    "c": "celsius", "°c": "celsius", "℃": "celsius", "摄氏度": "celsius", "degree celsius": "celsius",
    "degrees celsius": "celsius", "f": "fahrenheit", "°f": "fahrenheit", "℉": "fahrenheit", "华氏度": "fahrenheit",
    "degree fahrenheit": "fahrenheit", "degrees fahrenheit": "fahrenheit", "k": "kelvin", "kelvins": "kelvin",
    "开尔文": "kelvin", "开": "kelvin",
}


def _unit(name) -> str:
    """A unit name or alias -> its canonical name in UNITS ("公里", "Kilometres", "kms" -> "km")."""
    if not isinstance(name, str) or not name.strip():
        raise ToolError("units must be non-empty strings such as \"km\" or \"mile\"")
    # Case and spacing never change a unit here; a final full stop is an abbreviation mark ("lb.", "ft.", "oz.").
    key = " ".join(name.split()).lower().rstrip(".")
    key = UNIT_ALIASES.get(key, key)
    if key not in UNITS:
        raise ToolError(f"unknown unit {name[:40]!r}; known units: {', '.join(UNITS)}")
    return key


def _number(value, what: str) -> float:
    """A finite number from a number or a numeric string ("5", "2.5", "1,000"), at most MAX_QUANTITY in size;
    refuses bools, NaN and infinities."""
    if isinstance(value, str):
        try:
            value = float(value.strip().replace(",", ""))
        except ValueError:
            raise ToolError(f"{what} must be a number, got {value[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToolError(f"{what} must be a number, got {type(value).__name__}")
    # The size check comes first and works on ints as they are: Python compares an int with a float exactly,
    # while math.isfinite(10**400) would raise OverflowError converting the int to a float.
    if abs(value) > MAX_QUANTITY or (isinstance(value, float) and not math.isfinite(value)):
        raise ToolError(f"{what} must be a finite number below 1e15")
    return float(value)


def _whole_number(value, what: str) -> int:
    """An integer from an int, a whole float (5.0) or a numeric string ("5"), at most MAX_QUANTITY in size."""
    number = _number(value, what)
    if not number.is_integer():
        raise ToolError(f"{what} must be a whole number, got {str(value)[:40]}")
    return int(number)  # exact: every float up to 1e15 that is whole is an exact integer


def _to_celsius(v, unit):
    return {"celsius": v, "fahrenheit": (v - 32) * 5 / 9, "kelvin": v - 273.15}[unit]


def _from_celsius(v, unit):
    return {"celsius": v, "fahrenheit": v * 9 / 5 + 32, "kelvin": v + 273.15}[unit]


def unit_converter(value, from_unit: str, to_unit: str) -> str:
    v = _number(value, "value")
    a, b = _unit(from_unit), _unit(to_unit)
    (dim_a, fa), (dim_b, fb) = UNITS[a], UNITS[b]
    if dim_a != dim_b:
        raise ToolError(f"cannot convert {a} ({dim_a}) to {b} ({dim_b})")
    if dim_a == "temperature":
        if _to_celsius(v, a) < -273.15 - 1e-9:
            raise ToolError("that temperature is below absolute zero")
        out = _from_celsius(_to_celsius(v, a), b)
    else:
        out = v * fa / fb
    return _result({"value": clean_number(v), "from_unit": a, "to_unit": b, "result": clean_number(out, 6)})


# ================================================================================================================
# Lookups with fixed tables
# ================================================================================================================
# The fixed clock: the "current time" every get_current_time call reports, in UTC. Fixed offsets, no daylight
# saving: a lookup table, not a time-zone database.
CLOCK_UTC = datetime(2025, 3, 7, 6, 30, 0, tzinfo=_tz.utc)
TIMEZONES: Dict[str, float] = {
    "UTC": 0, "Asia/Shanghai": 8, "Asia/Hong_Kong": 8, "Asia/Taipei": 8, "Asia/Singapore": 8, "Asia/Tokyo": 9,
    "Asia/Seoul": 9, "Asia/Kolkata": 5.5, "Asia/Dubai": 4, "Europe/London": 0, "Europe/Paris": 1,
    "Europe/Berlin": 1, "Europe/Moscow": 3, "America/New_York": -5, "America/Chicago": -6,
    "America/Los_Angeles": -8, "America/Sao_Paulo": -3, "Australia/Sydney": 11, "Pacific/Auckland": 13,
}
TIMEZONE_ALIASES: Dict[str, str] = {  # keys as _place_key writes them: lower case, no 市 / city / 时间 / time
    "gmt": "UTC", "utc": "UTC", "格林尼治": "UTC", "协调世界时": "UTC",
    "china": "Asia/Shanghai", "中国": "Asia/Shanghai",
    # every Chinese city of WEATHER shares Beijing's time
    "beijing": "Asia/Shanghai", "北京": "Asia/Shanghai", "shanghai": "Asia/Shanghai", "上海": "Asia/Shanghai",
    "guangzhou": "Asia/Shanghai", "广州": "Asia/Shanghai", "shenzhen": "Asia/Shanghai", "深圳": "Asia/Shanghai",
    "hangzhou": "Asia/Shanghai", "杭州": "Asia/Shanghai", "chengdu": "Asia/Shanghai", "成都": "Asia/Shanghai",
    "wuhan": "Asia/Shanghai", "武汉": "Asia/Shanghai", "nanjing": "Asia/Shanghai", "南京": "Asia/Shanghai",
    "xi'an": "Asia/Shanghai", "xian": "Asia/Shanghai", "西安": "Asia/Shanghai", "chongqing": "Asia/Shanghai",
    "重庆": "Asia/Shanghai",
    "hong kong": "Asia/Hong_Kong", "hongkong": "Asia/Hong_Kong", "香港": "Asia/Hong_Kong", "taipei": "Asia/Taipei",
    "台北": "Asia/Taipei", "singapore": "Asia/Singapore", "新加坡": "Asia/Singapore", "tokyo": "Asia/Tokyo",
    "japan": "Asia/Tokyo", "东京": "Asia/Tokyo", "日本": "Asia/Tokyo", "seoul": "Asia/Seoul", "首尔": "Asia/Seoul",
    "india": "Asia/Kolkata", "印度": "Asia/Kolkata", "kolkata": "Asia/Kolkata", "calcutta": "Asia/Kolkata",
    "加尔各答": "Asia/Kolkata", "mumbai": "Asia/Kolkata", "孟买": "Asia/Kolkata", "new delhi": "Asia/Kolkata",
    "delhi": "Asia/Kolkata", "新德里": "Asia/Kolkata", "dubai": "Asia/Dubai", "迪拜": "Asia/Dubai",
    "london": "Europe/London", "伦敦": "Europe/London", "paris": "Europe/Paris", "巴黎": "Europe/Paris",
    "berlin": "Europe/Berlin", "柏林": "Europe/Berlin", "moscow": "Europe/Moscow", "莫斯科": "Europe/Moscow",
    "new york": "America/New_York", "nyc": "America/New_York", "纽约": "America/New_York",
    "chicago": "America/Chicago", "芝加哥": "America/Chicago", "los angeles": "America/Los_Angeles",
    "洛杉矶": "America/Los_Angeles", "sao paulo": "America/Sao_Paulo", "são paulo": "America/Sao_Paulo",
    "圣保罗": "America/Sao_Paulo", "sydney": "Australia/Sydney", "悉尼": "Australia/Sydney",
    "auckland": "Pacific/Auckland", "奥克兰": "Pacific/Auckland",
}
_TIMEZONE_NAMES = {name.lower(): name for name in TIMEZONES}  # "asia/tokyo" -> "Asia/Tokyo"
_OFFSET_RE = re.compile(r"^(?:utc|gmt)\s*([+-])\s*(\d{1,2})(?::?(\d{2}))?$", re.I)
# What people add to a place name without changing the place: "北京市", "Beijing City", "北京时间", "Tokyo time".
_PLACE_SUFFIXES = ("时间", " time", "市", " city")


def _place_key(name: str) -> str:
    """A city or time-zone name as the alias tables spell it: single spaces, lower case, no suffix above."""
    key = " ".join(name.split()).lower()
    for suffix in _PLACE_SUFFIXES:
        key = key.removesuffix(suffix)
    return key.strip()


def _offset_text(hours: float) -> str:
    sign = "+" if hours >= 0 else "-"
    minutes = int(round(abs(hours) * 60))
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _timezone(timezone) -> Tuple[str, float]:
    """A time zone as written -> (its canonical name, its UTC offset in hours). The name is an IANA name of
    TIMEZONES ("东京", "tokyo time" -> "Asia/Tokyo") or, for an offset, "UTC+HH:MM" ("utc+8" -> "UTC+08:00")."""
    if not isinstance(timezone, str) or not timezone.strip():
        raise ToolError("timezone must be a string such as \"Asia/Shanghai\", \"Tokyo\" or \"UTC+8\"")
    key = _place_key(timezone)
    name = _TIMEZONE_NAMES.get(key) or TIMEZONE_ALIASES.get(key)
    if name is not None:
        return name, TIMEZONES[name]
    m = _OFFSET_RE.match(timezone.strip())
    if not m:
        raise ToolError(f"unknown timezone {timezone[:40]!r}; use an IANA name ({', '.join(TIMEZONES)}), "
                        f"a city, or an offset such as UTC+8")
    hours = (int(m.group(2)) + int(m.group(3) or 0) / 60) * (1 if m.group(1) == "+" else -1)
    if not -12 <= hours <= 14:
        raise ToolError("UTC offsets range from -12 to +14")
    return f"UTC{_offset_text(hours)}", hours


def get_current_time(timezone: str = "Asia/Shanghai") -> str:
    name, hours = _timezone(timezone)
    local = CLOCK_UTC + timedelta(hours=hours)
    return _result({"timezone": name, "datetime": local.strftime("%Y-%m-%d %H:%M:%S"),
                    "weekday": local.strftime("%A"), "utc_offset": _offset_text(hours)})


# Yuan per unit of each currency (a fixed snapshot, not live rates); cross rates go through CNY.
CNY_PER_UNIT: Dict[str, float] = {
    "CNY": 1.0, "USD": 7.21, "EUR": 7.85, "GBP": 9.12, "JPY": 0.048, "AUD": 4.72, "CAD": 5.32, "HKD": 0.925,
    "KRW": 0.0054, "SGD": 5.38, "CHF": 8.18, "RUB": 0.079, "INR": 0.087,
}
CURRENCY_ALIASES: Dict[str, str] = {  # keys as _currency writes them: upper case, single spaces
    "RMB": "CNY", "YUAN": "CNY", "CHINESE YUAN": "CNY", "RENMINBI": "CNY", "人民币": "CNY", "元": "CNY", "块": "CNY",
    "块钱": "CNY",
    "DOLLAR": "USD", "DOLLARS": "USD", "US DOLLAR": "USD", "US DOLLARS": "USD", "U.S. DOLLAR": "USD",
    "U.S. DOLLARS": "USD", "US$": "USD", "$": "USD", "美元": "USD", "美金": "USD",
    "EURO": "EUR", "EUROS": "EUR", "€": "EUR", "欧元": "EUR", "欧": "EUR",
    "POUND": "GBP", "POUNDS": "GBP", "BRITISH POUND": "GBP", "BRITISH POUNDS": "GBP", "POUND STERLING": "GBP",
    "STERLING": "GBP", "£": "GBP", "英镑": "GBP",
    "YEN": "JPY", "JAPANESE YEN": "JPY", "日元": "JPY", "日币": "JPY", "日圆": "JPY",
    "AUSTRALIAN DOLLAR": "AUD", "AUSTRALIAN DOLLARS": "AUD", "澳元": "AUD", "澳币": "AUD", "澳大利亚元": "AUD",
    "CANADIAN DOLLAR": "CAD", "CANADIAN DOLLARS": "CAD", "加元": "CAD", "加币": "CAD", "加拿大元": "CAD",
    "HONG KONG DOLLAR": "HKD", "HONG KONG DOLLARS": "HKD", "港币": "HKD", "港元": "HKD",
    "WON": "KRW", "KOREAN WON": "KRW", "SOUTH KOREAN WON": "KRW", "韩元": "KRW", "韩币": "KRW",
    "SINGAPORE DOLLAR": "SGD", "SINGAPORE DOLLARS": "SGD", "新加坡元": "SGD", "新币": "SGD",
    "SWISS FRANC": "CHF", "SWISS FRANCS": "CHF", "FRANC": "CHF", "FRANCS": "CHF", "瑞士法郎": "CHF", "法郎": "CHF",
    "RUBLE": "RUB", "RUBLES": "RUB", "ROUBLE": "RUB", "ROUBLES": "RUB", "RUSSIAN RUBLE": "RUB",
    "RUSSIAN RUBLES": "RUB", "卢布": "RUB", "俄罗斯卢布": "RUB",
    "RUPEE": "INR", "RUPEES": "INR", "INDIAN RUPEE": "INR", "INDIAN RUPEES": "INR", "卢比": "INR", "印度卢比": "INR",
}


def _currency(code, what: str) -> str:
    """A currency code, name or sign -> its ISO code in CNY_PER_UNIT ("usd", "US dollars", "美元" -> "USD")."""
    if not isinstance(code, str) or not code.strip():
        raise ToolError(f"{what} must be a currency code such as \"USD\"")
    key = " ".join(code.split()).upper()  # upper() leaves Chinese as it is
    key = CURRENCY_ALIASES.get(key, key)
    if key not in CNY_PER_UNIT:
        raise ToolError(f"unknown currency {code[:20]!r}; known: {', '.join(CNY_PER_UNIT)}")
    return key


def get_exchange_rate(from_currency: str, to_currency: str, amount=1) -> str:
    a, b = _currency(from_currency, "from_currency"), _currency(to_currency, "to_currency")
    n = _number(amount, "amount")
    rate = CNY_PER_UNIT[a] / CNY_PER_UNIT[b]
    out = {"from": a, "to": b, "rate": clean_number(rate, 6)}
    if n != 1:
        out.update(amount=clean_number(n), converted=clean_number(round(n * rate, 2)))
    return _result(out)


# Made-up weather: a fixed table so results are reproducible (the names match common city spellings).
WEATHER: Dict[str, Tuple[int, str, str, int]] = {  # city -> (°C, 中文, English, humidity %)
    "北京": (28, "晴", "sunny", 40), "上海": (15, "多云", "cloudy", 70), "广州": (32, "闷热", "hot and humid", 85),
    "深圳": (30, "晴", "sunny", 75), "杭州": (22, "阴", "overcast", 65), "成都": (18, "小雨", "light rain", 80),
    "武汉": (25, "多云", "cloudy", 60), "南京": (20, "晴", "sunny", 55), "西安": (16, "大风", "windy", 35),
    "重庆": (26, "阴", "overcast", 72), "Tokyo": (12, "晴", "sunny", 50), "New York": (8, "多云", "cloudy", 55),
    "London": (5, "小雨", "light rain", 85), "Paris": (10, "阴", "overcast", 70), "Sydney": (25, "晴朗", "clear", 60),
}
WEATHER_ALIASES: Dict[str, str] = {  # keys as _place_key writes them; the English WEATHER keys match as they are
    "beijing": "北京", "shanghai": "上海", "guangzhou": "广州", "shenzhen": "深圳", "hangzhou": "杭州",
    "chengdu": "成都", "wuhan": "武汉", "nanjing": "南京", "xi'an": "西安", "xian": "西安", "chongqing": "重庆",
    "东京": "Tokyo", "纽约": "New York", "nyc": "New York", "伦敦": "London", "巴黎": "Paris", "悉尼": "Sydney",
}
_WEATHER_CITIES = {city.lower(): city for city in WEATHER}  # "new york" -> "New York"


def _city(location) -> str:
    """A city as written -> its key in WEATHER ("Beijing City", "北京市" -> "北京"; "new york" -> "New York")."""
    if not isinstance(location, str) or not location.strip():
        raise ToolError("location must be a city name such as \"北京\" or \"London\"")
    key = _place_key(location)
    city = _WEATHER_CITIES.get(key) or WEATHER_ALIASES.get(key)
    if city is None:
        raise ToolError(f"no weather data for {location[:40]!r}; known cities: {', '.join(WEATHER)}")
    return city


def get_current_weather(location: str) -> str:
    temp, zh, en, humidity = WEATHER[_city(location)]
    # The reply speaks the language the city was asked in ("北京" -> 晴, "Beijing" -> sunny).
    return _result({"city": location.strip(), "temperature": f"{temp}°C",
                    "condition": zh if _has_cjk(location) else en, "humidity": f"{humidity}%"})


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"  # the CJK Unified Ideographs block: the common Chinese characters


def _has_cjk(s: str) -> bool:
    return any(_is_cjk(ch) for ch in s)


def _text(text, what: str = "text") -> str:
    """A non-empty text, stripped: whitespace around it is never part of what the user asked about."""
    if not isinstance(text, str) or not text.strip():
        raise ToolError(f"{what} must be a non-empty string")
    return text.strip()


PHRASES: Dict[str, str] = {  # a small phrase book: Chinese -> English
    "你好": "Hello", "谢谢": "Thank you", "早上好": "Good morning", "晚安": "Good night", "再见": "Goodbye",
    "你好世界": "Hello World", "今天天气真好": "The weather is nice today", "我喜欢编程": "I love programming",
    "机器学习很有趣": "Machine learning is interesting", "生日快乐": "Happy birthday", "新年快乐": "Happy New Year",
    "我是一个小型语言模型": "I am a small language model",
}
LANGUAGE_ALIASES = {"chinese": "chinese", "zh": "chinese", "zh-cn": "chinese", "zh_cn": "chinese", "cn": "chinese",
                    "mandarin": "chinese", "中文": "chinese", "汉语": "chinese", "简体中文": "chinese",
                    "普通话": "chinese", "english": "english", "en": "english", "en-us": "english",
                    "en_us": "english", "en-gb": "english", "英文": "english", "英语": "english"}


def _language(target_language) -> str:
    """A language as written -> "chinese" or "english" ("中文", "zh", "English" ...)."""
    key = " ".join(target_language.split()).lower() if isinstance(target_language, str) else None
    if key not in LANGUAGE_ALIASES:
        raise ToolError("target_language must be \"chinese\" or \"english\"")
    return LANGUAGE_ALIASES[key]


def _norm_phrase(s: str) -> str:
    return re.sub(r"[\s.!?,。！？，]+", " ", s).strip().lower()


def translate_text(text: str, target_language: str) -> str:
    key, lang = _norm_phrase(_text(text)), _language(target_language)
    for chinese, english in PHRASES.items():
        if key in (_norm_phrase(chinese), _norm_phrase(english)):
            return _result({"translated_text": chinese if lang == "chinese" else english, "target_language": lang})
    raise ToolError("this offline phrase book has no translation for that text")


# ================================================================================================================
# Computed from the arguments alone
# ================================================================================================================
def _draw(lo: int, hi: int) -> int:
    """The "random" number of random_number(lo, hi): a SHA-256 hash of the bounds, reduced to lo..hi.

    Why not the `random` module: a tool result must be the same on every run and machine (rewards against a
    `gt` list, resumed runs, exact tests), so the number has to be a function of the call. A hash of the
    arguments is one, fixed by the SHA-256 standard rather than by a Python version's generator, and from one call
    the model cannot tell it from a real draw. 128 bits modulo a span of at most 1e15 + 1 leave a bias below
    1e-23: every number of the range is as likely as the others across different calls."""
    digest = hashlib.sha256(f"random_number:{lo}:{hi}".encode()).digest()
    return lo + int.from_bytes(digest[:16], "big") % (hi - lo + 1)


def random_number(min=0, max=100) -> str:
    # The parameters are named as upstream's schema names them (its data calls random_number with min and max);
    # they shadow the builtins min() and max() inside this function only, which does not call them.
    lo, hi = _whole_number(min, "min"), _whole_number(max, "max")
    if lo > hi:
        raise ToolError(f"min ({lo}) must not be larger than max ({hi})")
    if hi - lo > MAX_QUANTITY:
        raise ToolError("the range is too large (max - min must be at most 1e15)")
    return _result({"result": _draw(lo, hi), "min": lo, "max": hi})


def _count_words(text: str) -> int:
    """Every Chinese character is a word (Chinese puts no spaces between words, and word processors count it
    this way); other words are the space-separated pieces holding a letter or a digit, so "Hello, world!" is 2
    and a lone "," or "-" is not a word."""
    chinese = sum(1 for ch in text if _is_cjk(ch))
    rest = "".join(" " if _is_cjk(ch) else ch for ch in text)
    return chinese + sum(1 for piece in rest.split() if any(ch.isalnum() for ch in piece))


def text_length(text: str) -> str:
    text = _text(text)
    return _result({"characters": len(text), "words": _count_words(text)})


# ================================================================================================================
# Registry, schemas, calls
# ================================================================================================================
# Descriptions are short on purpose: every offered tool's description is in the prompt of every turn, and a small
# model pays for each token (our tokenizer spends ~40 tokens on one long English sentence).
def _schema(name: str, description: str, properties: dict, required: List[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


_REGISTRY: Dict[str, Tuple[Callable[..., str], dict]] = {
    "calculate_math": (calculate_math, _schema(
        "calculate_math", "计算数学表达式 arithmetic (+ - * / ** sqrt round)",
        {"expression": {"type": "string", "description": "e.g. (3 + 4) * 5 / 2"}}, ["expression"])),
    "unit_converter": (unit_converter, _schema(
        "unit_converter", "单位换算 unit conversion",
        {"value": {"type": "number"}, "from_unit": {"type": "string", "description": "e.g. km, mile, kg, celsius"},
         "to_unit": {"type": "string"}}, ["value", "from_unit", "to_unit"])),
    "get_current_time": (get_current_time, _schema(
        "get_current_time", "获取时间 current time",
        {"timezone": {"type": "string", "description": "IANA name, city or UTC offset, e.g. Asia/Tokyo",
                      "default": "Asia/Shanghai"}}, [])),
    "get_exchange_rate": (get_exchange_rate, _schema(
        "get_exchange_rate", "查询汇率 exchange rate",
        {"from_currency": {"type": "string", "description": "e.g. USD"}, "to_currency": {"type": "string"},
         "amount": {"type": "number", "default": 1}}, ["from_currency", "to_currency"])),
    "get_current_weather": (get_current_weather, _schema(
        "get_current_weather", "获取天气 weather",
        {"location": {"type": "string", "description": "city name, e.g. 北京 or London"}}, ["location"])),
    "translate_text": (translate_text, _schema(
        "translate_text", "翻译文本 translate Chinese/English",
        {"text": {"type": "string"}, "target_language": {"type": "string", "enum": ["chinese", "english"]}},
        ["text", "target_language"])),
    "random_number": (random_number, _schema(
        "random_number", "生成随机数 random integer",
        {"min": {"type": "integer", "description": "the smallest allowed number", "default": 0},
         "max": {"type": "integer", "description": "the largest allowed number", "default": 100}}, [])),
    "text_length": (text_length, _schema(
        "text_length", "统计文本长度 text length",
        {"text": {"type": "string", "description": "the text to count"}}, ["text"])),
}

TOOL_NAMES: List[str] = list(_REGISTRY)
TOOLS: List[dict] = [schema for _, schema in _REGISTRY.values()]


def tool_schemas(names=None) -> List[dict]:
    """The OpenAI-style schemas of `names` (a list, or a comma-separated string; None or "all" = every tool),
    in the order given. An unknown name raises UnknownToolError listing the known ones."""
    if names is None or names == "all":
        return [json.loads(json.dumps(s)) for s in TOOLS]  # copies: callers may edit them
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise UnknownToolError(f"unknown tool(s) {', '.join(map(repr, unknown))}; known: {', '.join(TOOL_NAMES)}")
    return [json.loads(json.dumps(_REGISTRY[n][1])) for n in names]


def _arguments(arguments) -> dict:
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, (str, bytes)):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            raise ToolError("arguments are not valid JSON") from None
    if not isinstance(arguments, dict):
        raise ToolError(f"arguments must be a JSON object, got {type(arguments).__name__}")
    return arguments


def run_tool(name, arguments=None) -> Tuple[str, bool]:
    """(result text for the model, whether the call succeeded). Never raises."""
    try:
        if not isinstance(name, str) or name not in _REGISTRY:
            raise ToolError(f"unknown tool {str(name)[:40]!r}; available: {', '.join(TOOL_NAMES)}")
        fn, schema = _REGISTRY[name]
        args = _arguments(arguments)
        params = schema["function"]["parameters"]
        extra = [k for k in args if k not in params["properties"]]
        if extra:
            raise ToolError(f"{name} got unexpected argument(s) {', '.join(map(repr, extra))}; it takes "
                            f"{', '.join(params['properties'])}")
        missing = [k for k in params["required"] if k not in args]
        if missing:
            raise ToolError(f"{name} is missing required argument(s) {', '.join(map(repr, missing))}")
        text = fn(**args)
    except ToolError as e:
        return _error(str(e)), False
    except Exception as e:  # noqa: BLE001 - the contract: a call never raises into a rollout or a server
        return _error(f"internal error in {name}: {type(e).__name__}"), False
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS]
    return text, True


def call_tool(name, arguments=None) -> str:
    """Run one call and return the text the model sees (a JSON result or {"error": ...}). Never raises."""
    return run_tool(name, arguments)[0]


# How each tool reads each of its arguments: the very functions the tools call, so that normalize_arguments
# cannot disagree with a tool about what an argument means.
_READ_ARGUMENT: Dict[str, Dict[str, Callable[[Any], Any]]] = {
    "calculate_math": {"expression": _expression},
    "unit_converter": {"value": lambda v: _number(v, "value"), "from_unit": _unit, "to_unit": _unit},
    "get_current_time": {"timezone": lambda tz: _timezone(tz)[0]},
    "get_exchange_rate": {"from_currency": lambda c: _currency(c, "from_currency"),
                          "to_currency": lambda c: _currency(c, "to_currency"),
                          "amount": lambda n: _number(n, "amount")},
    "get_current_weather": {"location": _city},
    "translate_text": {"text": _text, "target_language": _language},
    "random_number": {"min": lambda n: _whole_number(n, "min"), "max": lambda n: _whole_number(n, "max")},
    "text_length": {"text": _text},
}


def normalize_arguments(name: str, arguments) -> Optional[dict]:
    """A call's arguments as the tool interprets them, or None if the call fails (run_tool's verdict).

    Units, currencies, time zones, cities and languages become the canonical names the tool uses ("公里" -> "km",
    "US dollars" -> "USD", "东京" -> "Asia/Tokyo", "Beijing City" -> "北京", "中文" -> "chinese"), numbers become
    floats (random_number's bounds: ints), texts and expressions are stripped, and the schema's defaults are
    filled in (get_exchange_rate without an amount is the call with amount=1.0). Two calls with equal
    normalised arguments ask the same thing and get the same result (get_current_weather's reply still echoes the
    city as written, in its language), so a reward or an eval can compare calls fairly."""
    if not run_tool(name, arguments)[1]:  # checks everything, including what no single argument shows (kg -> km)
        return None
    properties = _REGISTRY[name][1]["function"]["parameters"]["properties"]
    given = _arguments(arguments)  # cannot fail: run_tool has just read the same arguments
    args = {**{k: p["default"] for k, p in properties.items() if "default" in p}, **given}
    return {k: _READ_ARGUMENT[name][k](args[k]) for k in properties}


# ================================================================================================================
# Parsing the model's calls
# ================================================================================================================
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def parse_tool_call_json(raw: str) -> Optional[dict]:
    """The JSON inside one <tool_call>...</tool_call> -> {"name": str, "arguments": str (a JSON text, as in the
    OpenAI API)}; None if it is not a call (bad JSON, no name). Arguments given as an object are serialised;
    arguments given as a string are kept as they are (call_tool reports them if they are not valid JSON)."""
    try:
        call = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"].strip():
        return None
    args = call.get("arguments", {})
    if args is None:
        args = {}
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return {"name": call["name"].strip(), "arguments": args}


def parse_tool_calls(text: str) -> Tuple[str, List[dict]]:
    """A complete reply -> (content, calls).

    `calls` are the well-formed <tool_call>{json}</tool_call> blocks in order, each {"name", "arguments" (JSON
    text)}; `content` is the text with those blocks removed, stripped. A block whose JSON is not a call stays in
    `content` verbatim (the model's mistake stays visible), so `text.count("<tool_call>") - len(calls)` counts
    malformed or unclosed calls. <think> blocks are not touched (split them off first if needed).

    A block runs from a <tool_call> to the FIRST </tool_call> after it (a <tool_call> inside is part of its
    text). The scan only moves forward, so the time is linear in the length of the text: a lazy regex
    (`<tool_call>(.*?)</tool_call>`) rescans the rest of the text from every unclosed tag, and a degenerate
    reply with thousands of them would stall a rollout for seconds."""
    calls, kept = [], []
    pos = 0     # the start of the text not yet copied to `kept`
    search = 0  # where the next <tool_call> may start
    while True:
        start = text.find(TOOL_CALL_OPEN, search)
        if start < 0:
            break
        end = text.find(TOOL_CALL_CLOSE, start + len(TOOL_CALL_OPEN))
        if end < 0:
            break  # no </tool_call> after this tag, so none after any later tag either: no more blocks
        search = end + len(TOOL_CALL_CLOSE)
        call = parse_tool_call_json(text[start + len(TOOL_CALL_OPEN):end].strip())
        if call is None:
            continue  # a malformed block stays in the content
        kept.append(text[pos:start])
        pos = search
        calls.append(call)
    kept.append(text[pos:])
    content = "\n".join(part.strip() for part in kept if part.strip())
    return content, calls
