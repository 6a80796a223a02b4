"""Seeded generator of tool-use data: tool-call SFT conversations, agentic-RL tasks and held-out eval tasks.

    python scripts/make_tool_data.py --out_dir out/tool_data --sft 20000 --rl 2000 --eval 200
    python scripts/make_tool_data.py --from_gsm8k ../shared/data/bench/gsm8k_train.jsonl --out_dir out/tool_data

writes, in upstream minimind-3's formats (README "Data formats"):
    sft.jsonl     {"conversations": [system (+ "tools"), user, assistant (+ "tool_calls"), tool, ..., assistant]}
    agent_rl.jsonl  {"conversations": [system (+ "tools"), user, assistant ""], "gt": [...], "n_calls": N}
    eval.jsonl    scripts/eval_toolcall.py tasks: {"id", "question", "tools", "calls", "answer"}
    copy.jsonl    (--copy N) pretraining texts that are copies of random spans: a warm-up that teaches copying

Why generated, and why this way. A small model learns to CALL tools only from data that forces it to read the
question: every number, city, currency, unit and phrase is drawn at random, so the arguments must be copied (or
mapped: "公里" -> "km") from the question; a model that memorises a call scores nothing. Each family of tasks
has Chinese and English phrasings, including word forms of the operators ("23 times 47", "23乘以47"):

    calc        calculate_math: one or two operators, brackets, powers, decimals, typed or in words
    unit        unit_converter: length, mass, volume, time, speed, temperature
    time        get_current_time: a city -> its IANA time zone
    fx          get_exchange_rate: an amount (or just the rate) between two of 13 currencies
    weather     get_current_weather: one of the cities the tool knows, in the language it was asked in
    translate   translate_text: a phrase of the tool's phrase book, either direction
    random      random_number: a range
    length      text_length: a random text
    parallel    two calls in one turn (the weather or the time of two cities, two conversions)
    chain       a call whose argument comes from an earlier result (exchange, then split; weather, then to °F)
    error       a call that fails (a city without data, a division by zero), answered gracefully
    chat        greetings and questions that need no tool, with tools offered all the same

Every tool result in the data is the real output of model/tools.py, and every final answer quotes it.
Tools offered: the ones the task needs plus 0-3 others (sometimes all), shuffled, so choosing is learned too.

Held out. The templates of each family are split: the last quarter of each list is used ONLY by eval.jsonl, and
no training or RL record makes a call equal to any eval call (normalised as the tool reads it), so the eval
measures phrasings and numbers the model never saw. (Calls over the finite tables - 15 weather cities, 19 time
zones, 12 phrases - are shared: the tool knows nothing else; their eval tasks differ by template.)
"""
import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dataset.lm_dataset import DataFormatError, iter_jsonl  # noqa: E402
from model.atomic_io import atomic_write_text  # noqa: E402
from model.errors import run_main  # noqa: E402
from model.scoring import gold_number  # noqa: E402
from model.tools import (PHRASES, TOOL_NAMES, WEATHER, format_number, normalize_arguments, run_tool,  # noqa: E402
                         tool_schemas)

# ================================================================================================================
# Names as people write them. The ARGUMENT is always the canonical form the tool documents (km, USD, an IANA
# zone), except for weather locations and texts, which are copied as written.
# ================================================================================================================
UNITS = {  # canonical -> (dimension, Chinese names, English names)
    "km": ("length", ["公里", "千米"], ["km", "kilometers"]), "m": ("length", ["米"], ["meters", "m"]),
    "cm": ("length", ["厘米"], ["centimeters", "cm"]), "mm": ("length", ["毫米"], ["millimeters", "mm"]),
    "mile": ("length", ["英里"], ["miles"]), "foot": ("length", ["英尺"], ["feet"]),
    "inch": ("length", ["英寸"], ["inches"]), "yard": ("length", ["码"], ["yards"]),
    "kg": ("mass", ["公斤", "千克"], ["kilograms", "kg"]), "g": ("mass", ["克"], ["grams", "g"]),
    "pound": ("mass", ["磅"], ["pounds", "lbs"]), "ounce": ("mass", ["盎司"], ["ounces"]),
    "t": ("mass", ["吨"], ["tons"]), "jin": ("mass", ["斤"], ["jin"]),
    "l": ("volume", ["升"], ["liters"]), "ml": ("volume", ["毫升"], ["milliliters", "ml"]),
    "gallon": ("volume", ["加仑"], ["gallons"]), "cup": ("volume", ["杯"], ["cups"]),
    "s": ("time", ["秒"], ["seconds"]), "min": ("time", ["分钟"], ["minutes"]), "h": ("time", ["小时"], ["hours"]),
    "day": ("time", ["天"], ["days"]), "week": ("time", ["周", "星期"], ["weeks"]),
    "km/h": ("speed", ["公里/小时"], ["km/h", "kilometers per hour"]), "m/s": ("speed", ["米/秒"], ["m/s"]),
    "mph": ("speed", ["英里/小时"], ["mph", "miles per hour"]), "knot": ("speed", ["节"], ["knots"]),
    "celsius": ("temperature", ["摄氏度"], ["degrees Celsius", "Celsius"]),
    "fahrenheit": ("temperature", ["华氏度"], ["degrees Fahrenheit", "Fahrenheit"]),
    "kelvin": ("temperature", ["开尔文"], ["kelvin"]),
}
CURRENCIES = {  # code -> (Chinese names, English names)
    "CNY": (["人民币", "元"], ["Chinese yuan", "yuan", "RMB", "CNY"]), "USD": (["美元", "美金"], ["US dollars", "USD"]),
    "EUR": (["欧元"], ["euros", "EUR"]), "GBP": (["英镑"], ["British pounds", "GBP"]),
    "JPY": (["日元"], ["Japanese yen", "yen", "JPY"]), "AUD": (["澳元"], ["Australian dollars", "AUD"]),
    "CAD": (["加元"], ["Canadian dollars", "CAD"]), "HKD": (["港币", "港元"], ["Hong Kong dollars", "HKD"]),
    "KRW": (["韩元"], ["Korean won", "KRW"]), "SGD": (["新加坡元"], ["Singapore dollars", "SGD"]),
    "CHF": (["瑞士法郎"], ["Swiss francs", "CHF"]), "RUB": (["卢布"], ["rubles", "RUB"]),
    "INR": (["卢比"], ["Indian rupees", "INR"]),
}
ZONES = [  # (Chinese, English, IANA)
    ("北京", "Beijing", "Asia/Shanghai"), ("上海", "Shanghai", "Asia/Shanghai"), ("香港", "Hong Kong", "Asia/Hong_Kong"),
    ("台北", "Taipei", "Asia/Taipei"), ("新加坡", "Singapore", "Asia/Singapore"), ("东京", "Tokyo", "Asia/Tokyo"),
    ("首尔", "Seoul", "Asia/Seoul"), ("孟买", "Mumbai", "Asia/Kolkata"), ("迪拜", "Dubai", "Asia/Dubai"),
    ("伦敦", "London", "Europe/London"), ("巴黎", "Paris", "Europe/Paris"), ("柏林", "Berlin", "Europe/Berlin"),
    ("莫斯科", "Moscow", "Europe/Moscow"), ("纽约", "New York", "America/New_York"),
    ("芝加哥", "Chicago", "America/Chicago"), ("洛杉矶", "Los Angeles", "America/Los_Angeles"),
    ("圣保罗", "Sao Paulo", "America/Sao_Paulo"), ("悉尼", "Sydney", "Australia/Sydney"),
    ("奥克兰", "Auckland", "Pacific/Auckland"),
]
CITY_EN = {"北京": "Beijing", "上海": "Shanghai", "广州": "Guangzhou", "深圳": "Shenzhen", "杭州": "Hangzhou",
           "成都": "Chengdu", "武汉": "Wuhan", "南京": "Nanjing", "西安": "Xi'an", "重庆": "Chongqing"}
WEATHER_CITIES = [(CITY_EN.get(c, {"Tokyo": "东京", "New York": "纽约", "London": "伦敦", "Paris": "巴黎",
                                   "Sydney": "悉尼"}.get(c)), c) for c in WEATHER]  # (one name, the other)
UNKNOWN_CITIES = [("拉萨", "Lhasa"), ("哈尔滨", "Harbin"), ("开罗", "Cairo"), ("罗马", "Rome"), ("多伦多", "Toronto"),
                  ("曼谷", "Bangkok"), ("昆明", "Kunming"), ("马德里", "Madrid")]
WORDS_ZH = ["春天", "学习", "朋友", "电脑", "快乐", "城市", "音乐", "阳光", "故事", "大海", "月亮", "工作", "梦想", "时间",
            "花园", "书本", "火车", "星星", "画画", "晚饭"]
WORDS_EN = ["apple", "river", "music", "green", "window", "happy", "garden", "silver", "planet", "coffee", "travel",
            "little", "paper", "summer", "orange", "bridge", "dream", "pencil", "winter", "light"]
SYSTEMS = ["", "", "", "你是MiniMind，一个可以调用工具的AI助手。", "You are a helpful assistant with tools.",
           "需要精确计算或查询信息时，请调用合适的工具。", "Use the tools when they help."]
CHAT = [  # (question, answer): no tool needed
    ("你好", "你好！我是MiniMind，有什么可以帮你的吗？"), ("你好呀", "你好！今天想聊点什么？"),
    ("早上好！", "早上好！祝你今天一切顺利。"), ("晚上好", "晚上好！有什么需要帮忙的吗？"),
    ("谢谢你", "不客气，很高兴能帮到你！"), ("你是谁？", "我是MiniMind，一个小型语言模型，可以调用工具帮你计算和查询。"),
    ("请介绍一下你自己。", "我是MiniMind，一个可以在一张显卡上从零训练的小型语言模型。"), ("再见", "再见！欢迎随时回来。"),
    ("你会做什么？", "我可以聊天，也可以调用计算、换算、汇率、天气、时间和翻译等工具。"),
    ("Hello!", "Hello! I am MiniMind. How can I help you?"), ("Hi there", "Hi! What would you like to talk about?"),
    ("Good morning!", "Good morning! Have a great day."), ("Thank you!", "You are welcome!"),
    ("Who are you?", "I am MiniMind, a small language model that can use tools."),
    ("What can you do?", "I can chat, and I can call tools for math, units, exchange rates, weather, time and "
                         "translation."),
    ("Tell me about yourself.", "I am MiniMind, a small language model you can train from scratch on one GPU."),
    ("Goodbye", "Goodbye! Come back any time."), ("How are you?", "I am fine, thank you! How can I help?"),
    ("讲个笑话吧", "为什么数学书总是很忧郁？因为它有太多的问题。"), ("今天心情不好", "抱抱你，愿意和我说说发生了什么吗？"),
]


# ================================================================================================================
# Templates: (Chinese list, English list) per family. The LAST QUARTER of every list is held out for eval.
# ================================================================================================================
T = {
    "calc_sym": (["计算 {e}", "{e} 等于多少？", "帮我算一下 {e}", "请计算：{e}", "{e}=?", "算算{e}",
                  "{e} 的结果是多少", "请帮我计算 {e}", "求 {e} 的值", "{e} 是多少？", "麻烦算一下{e}", "{e}等于几"],
                 ["What is {e}?", "Calculate {e}.", "Compute {e}", "{e} = ?", "How much is {e}?",
                  "Please work out {e}.", "Evaluate {e}", "What does {e} equal?", "Solve {e}",
                  "Can you calculate {e}?", "Find the value of {e}.", "Tell me {e}."]),
    "calc_mul": (["{a}乘以{b}是多少？", "{a}乘{b}等于几", "计算{a}乘以{b}", "{a}和{b}的乘积是多少"],
                 ["What is {a} times {b}?", "Multiply {a} by {b}.", "{a} multiplied by {b}?",
                  "What is the product of {a} and {b}?"]),
    "calc_add": (["{a}加{b}等于多少？", "{a}加上{b}是多少", "计算{a}与{b}的和", "{a}和{b}的和是多少"],
                 ["What is {a} plus {b}?", "Add {a} and {b}.", "What is the sum of {a} and {b}?",
                  "{a} plus {b} equals?"]),
    "calc_sub": (["{a}减{b}等于多少？", "{a}减去{b}是多少", "计算{a}减去{b}", "{a}比{b}多多少"],
                 ["What is {a} minus {b}?", "Subtract {b} from {a}.", "{a} minus {b} is?",
                  "How much more is {a} than {b}?"]),
    "calc_div": (["{a}除以{b}等于多少？", "计算{a}除以{b}", "{a}除以{b}是多少", "{a}平均分成{b}份，每份多少"],
                 ["What is {a} divided by {b}?", "Divide {a} by {b}.", "{a} divided by {b}?",
                  "Split {a} into {b} equal parts: how much is each?"]),
    "calc_sq": (["{a}的平方是多少？", "计算{a}的平方", "{a}的平方等于几", "求{a}的平方"],
                ["What is {a} squared?", "What is the square of {a}?", "Compute {a} squared.",
                 "Square {a}."]),
    "unit": (["{v}{u1}等于多少{u2}？", "把{v}{u1}换算成{u2}", "{v}{u1}是多少{u2}", "{v}{u1}合多少{u2}？",
              "请把{v}{u1}转换为{u2}", "{v}{u1}换成{u2}是多少", "{v}{u1}相当于多少{u2}", "{v}{u1}折合多少{u2}"],
             ["How many {u2} is {v} {u1}?", "Convert {v} {u1} to {u2}.", "{v} {u1} in {u2}?",
              "What is {v} {u1} in {u2}?", "Please convert {v} {u1} into {u2}.", "{v} {u1} equals how many {u2}?",
              "Turn {v} {u1} into {u2}.", "How much is {v} {u1} in {u2}?"]),
    "time": (["{c}现在几点？", "现在{c}是几点？", "{c}现在的时间是多少", "查一下{c}的当前时间", "{c}那边几点了？",
              "{c}现在是什么时间", "告诉我{c}现在几点", "{c}的时间是？"],
             ["What time is it in {c}?", "What is the current time in {c}?", "Tell me the time in {c}.",
              "What's the time in {c} right now?", "Current time in {c}?", "Check the time in {c}.",
              "What time is it now in {c}?", "Do you know the time in {c}?"]),
    "fx": (["{n}{c1}能换多少{c2}？", "{n}{c1}等于多少{c2}", "把{n}{c1}换成{c2}", "{n}{c1}兑换成{c2}是多少",
            "{n}{c1}可以换多少{c2}", "{n}{c1}值多少{c2}？", "请把{n}{c1}换算成{c2}", "{n}{c1}折合{c2}多少"],
           ["How much is {n} {c1} in {c2}?", "Convert {n} {c1} to {c2}.", "{n} {c1} to {c2}?",
            "How many {c2} can I get for {n} {c1}?", "Exchange {n} {c1} into {c2}.", "What is {n} {c1} in {c2}?",
            "{n} {c1} equals how many {c2}?", "Change {n} {c1} to {c2}, please."]),
    "rate": (["{c1}兑{c2}的汇率是多少？", "{c1}对{c2}汇率", "查一下{c1}兑换{c2}的汇率", "现在{c1}兑{c2}是多少"],
             ["What is the exchange rate from {c1} to {c2}?", "{c1} to {c2} exchange rate?",
              "Exchange rate of {c1} to {c2}?", "How many {c2} is one {c1}?"]),
    "weather": (["{c}今天天气怎么样？", "{c}的天气如何", "查一下{c}的天气", "{c}现在多少度？", "{c}天气怎么样",
                 "{c}今天热吗？", "告诉我{c}的天气", "{c}现在下雨吗"],
                ["What's the weather in {c}?", "How is the weather in {c} today?", "Weather in {c}?",
                 "Is it hot in {c} now?", "Tell me the weather in {c}.", "What is the temperature in {c}?",
                 "How's the weather in {c}?", "Check the weather in {c}, please."]),
    "translate_en": (["把“{t}”翻译成英文", "“{t}”用英语怎么说？", "请将“{t}”翻译为英语", "“{t}”的英文是什么"],
                     ["Translate \"{t}\" into English.", "How do you say \"{t}\" in English?",
                      "What is \"{t}\" in English?", "English for \"{t}\"?"]),
    "translate_zh": (["把“{t}”翻译成中文", "“{t}”用中文怎么说？", "请将“{t}”翻译为汉语", "“{t}”的中文是什么"],
                     ["Translate \"{t}\" into Chinese.", "How do you say \"{t}\" in Chinese?",
                      "What is \"{t}\" in Chinese?", "Chinese for \"{t}\"?"]),
    "random": (["给我一个{a}到{b}之间的随机数", "在{a}和{b}之间随机选一个数", "随机生成一个{a}到{b}的整数",
                "帮我从{a}到{b}里抽一个数"],
               ["Give me a random number between {a} and {b}.", "Pick a random number from {a} to {b}.",
                "Random integer between {a} and {b}?", "Draw a number from {a} to {b} at random."]),
    "length": (["“{t}”有多少个字符？", "数一下“{t}”的长度", "“{t}”一共几个字", "计算“{t}”的字数"],
               ["How many characters are in \"{t}\"?", "Count the characters of \"{t}\".",
                "What is the length of \"{t}\"?", "How long is the text \"{t}\"?"]),
    "par_weather": (["{c1}和{c2}现在各是多少度？", "{c1}和{c2}的天气怎么样？", "查一下{c1}和{c2}的天气",
                     "对比一下{c1}和{c2}的天气"],
                    ["What is the weather in {c1} and in {c2}?", "Compare the weather in {c1} and {c2}.",
                     "How is the weather in {c1} and {c2}?", "Weather in {c1} and {c2}, please."]),
    "par_time": (["{c1}和{c2}现在分别几点？", "{c1}和{c2}现在各是几点", "查一下{c1}和{c2}的时间",
                  "{c1}和{c2}的当前时间"],
                 ["What time is it in {c1} and in {c2}?", "Tell me the time in {c1} and {c2}.",
                  "Current time in {c1} and {c2}?", "What are the times in {c1} and {c2} now?"]),
    "chain_split": (["我有{n}{c1}，换成人民币后平分给{k}个人，每人多少元？", "{n}{c1}换成人民币，再分给{k}个人，每人能分多少？",
                     "把{n}{c1}兑换成人民币后平均分成{k}份，每份多少元？", "{k}个人平分{n}{c1}换来的人民币，每人多少？"],
                    ["I have {n} {c1}. If I change it to yuan and split it among {k} people, how much does each "
                     "get?", "Convert {n} {c1} to yuan and divide it by {k}.",
                     "{n} {c1} in yuan, shared by {k} people: how much each?",
                     "Split {n} {c1}, changed into Chinese yuan, evenly among {k} friends."]),
    "chain_f": (["{c}现在是多少华氏度？", "{c}的气温换算成华氏度是多少", "用华氏度说一下{c}现在的温度",
                 "{c}现在几华氏度"],
                ["What is the temperature in {c} in Fahrenheit?", "How warm is {c} in degrees Fahrenheit?",
                 "Give me the temperature of {c} in Fahrenheit.", "{c} temperature in °F?"]),
    "err_weather": (["{c}今天天气怎么样？", "查一下{c}的天气", "{c}现在多少度？", "{c}的天气如何"],
                    ["What's the weather in {c}?", "How is the weather in {c} today?", "Weather in {c}?",
                     "Tell me the weather in {c}."]),
    "err_div": (["计算 {a}/0", "{a}除以0等于多少？", "帮我算一下{a}/0", "{a}/0是多少"],
                ["What is {a}/0?", "Divide {a} by 0.", "Calculate {a}/0.", "{a} divided by zero?"]),
}


def split_templates(templates: List[str], part: str) -> List[str]:
    """The training templates (the first three quarters) or the held-out ones (the last quarter)."""
    cut = len(templates) - max(1, len(templates) // 4)
    return templates[:cut] if part == "train" else templates[cut:]


# ================================================================================================================
# Tasks
# ================================================================================================================
class Task:
    """A question, the gold calls turn by turn, and how to word the final answer from the results."""

    def __init__(self, family: str, lang: str, question: str, turns: List[List[dict]],
                 answer: Callable[[List[List[dict]]], str], gt: Callable[[List[List[dict]]], List[str]],
                 tools: List[str]):
        self.family, self.lang, self.question, self.turns = family, lang, question, turns
        self.answer_fn, self.gt_fn, self.tools = answer, gt, tools


def _num(rng: random.Random, lo: int = 1, hi: int = 999, decimals: float = 0.0) -> str:
    """A number as text: an integer in [lo, hi], or (with probability `decimals`) one with one or two decimals."""
    if rng.random() < decimals:
        return f"{rng.uniform(lo, min(hi, 200)):.{rng.choice([1, 1, 2])}f}".rstrip("0").rstrip(".") or "0"
    # Log-uniform: short and long numbers alike (a model must copy 3 as well as 4821).
    return str(min(hi, max(lo, int(10 ** rng.uniform(math.log10(lo), math.log10(hi + 1))))))


def _expression(rng: random.Random) -> str:
    ops = ["+", "-", "*", "/"]
    shape = rng.random()
    a, b, c = _num(rng, decimals=0.15), _num(rng, decimals=0.1), _num(rng, 1, 99)
    if shape < 0.5:
        return f"{a}{rng.choice(ops)}{b}"
    if shape < 0.7:
        return f"{a}{rng.choice(ops)}{b}{rng.choice(ops)}{c}"
    if shape < 0.85:
        return f"({a}{rng.choice(ops[:2])}{b}){rng.choice(ops[2:])}{c}"
    if shape < 0.93:
        return f"{c}{rng.choice(ops[2:])}({a}{rng.choice(ops[:2])}{b})"
    return f"{_num(rng, 2, 30)}**{rng.choice([2, 2, 3])}{rng.choice(['', '+' + _num(rng, 1, 99)])}"


def _space(rng: random.Random, expr: str) -> str:
    """How a person might type the expression: spaces around operators sometimes, × and ÷ sometimes."""
    if "**" not in expr and rng.random() < 0.15:
        expr = expr.replace("*", "×").replace("/", "÷")
    if rng.random() < 0.3:
        for op in "+-×÷/":
            expr = expr.replace(op, f" {op} ")
        expr = expr.replace(" * ", "*").replace("*", " * ") if "**" not in expr else expr
    return expr


def _result(turns, i=0, j=0) -> dict:
    return json.loads(turns[i][j]["result"])


def _pick(rng, lang: str, names) -> str:
    zh, en = names
    return rng.choice(zh if lang == "zh" or not en else en)


def make_task(rng: random.Random, family: str, lang: str, part: str) -> Task:
    """One random task of `family` in `lang` ("zh"/"en"), phrased with a `part` ("train"/"eval") template."""
    tpl = lambda key: rng.choice(split_templates(T[key][0 if lang == "zh" else 1], part))  # noqa: E731
    call = lambda name, **kw: {"name": name, "arguments": kw}  # noqa: E731
    if family == "calc":
        kind = rng.choice(["sym"] * 5 + ["mul", "add", "sub", "div", "sq"])
        if kind == "sym":
            expr = _expression(rng)
            q, e = tpl("calc_sym").format(e=_space(rng, expr)), expr
        elif kind == "sq":
            a = _num(rng, 2, 99)
            q, e = tpl("calc_sq").format(a=a), f"{a}**2"
        else:
            a, b = _num(rng, decimals=0.1), _num(rng, decimals=0.1)
            q = tpl(f"calc_{kind}").format(a=a, b=b)
            e = f"{a}{ {'mul': '*', 'add': '+', 'sub': '-', 'div': '/'}[kind]}{b}"
        turns = [[call("calculate_math", expression=e)]]
        ans = lambda r: rng.choice([f"{e} = {_result(r)['result']}", f"结果是 {_result(r)['result']}。",  # noqa: E731
                                    f"{e} 的结果是 {_result(r)['result']}。"] if lang == "zh" else
                                   [f"{e} = {_result(r)['result']}", f"The result is {_result(r)['result']}.",
                                    f"{e} equals {_result(r)['result']}."])
        return Task(family, lang, q, turns, ans, lambda r: [_result(r)["result"]], ["calculate_math"])
    if family == "unit":
        dim = rng.choice(["length", "length", "mass", "mass", "volume", "time", "speed", "temperature"])
        u1, u2 = rng.sample([u for u, (d, _, _) in UNITS.items() if d == dim], 2)
        v = _num(rng, 1, 500, decimals=0.2) if dim != "temperature" else \
            str(rng.randint(200, 400) if u1 == "kelvin" else rng.randint(-20, 120))
        n1, n2 = _pick(rng, lang, UNITS[u1][1:]), _pick(rng, lang, UNITS[u2][1:])
        q = tpl("unit").format(v=v, u1=n1 if lang == "zh" else n1, u2=n2)
        turns = [[call("unit_converter", value=float(v) if "." in v else int(v), from_unit=u1, to_unit=u2)]]
        ans = lambda r: (f"{v}{n1}约等于{_result(r)['result']}{n2}。" if lang == "zh"  # noqa: E731
                         else f"{v} {n1} is about {_result(r)['result']} {n2}.")
        return Task(family, lang, q, turns, ans, lambda r: [str(_result(r)["result"])], ["unit_converter"])
    if family == "time":
        z = rng.choice(ZONES)
        c = z[0] if lang == "zh" else z[1]
        turns = [[call("get_current_time", timezone=z[2])]]

        def ans(r):
            d = _result(r)
            hm = d["datetime"][11:16]
            return (f"{c}现在是{hm}（{d['datetime'][:10]}，{d['weekday']}）。" if lang == "zh"
                    else f"It is {hm} in {c} now ({d['weekday']}, {d['datetime'][:10]}).")
        return Task(family, lang, tpl("time").format(c=c), turns, ans,
                    lambda r: [_result(r)["datetime"][11:16]], ["get_current_time"])
    if family in ("fx", "rate"):
        a, b = rng.sample(list(CURRENCIES), 2)
        if rng.random() < 0.5:
            b = "CNY" if a != "CNY" else b  # most questions people ask are to or from their own currency
        c1, c2 = _pick(rng, lang, CURRENCIES[a]), _pick(rng, lang, CURRENCIES[b])
        if family == "rate":
            turns = [[call("get_exchange_rate", from_currency=a, to_currency=b)]]
            ans = lambda r: (f"1{c1}约等于{_result(r)['rate']}{c2}。" if lang == "zh"  # noqa: E731
                             else f"1 {c1} is about {_result(r)['rate']} {c2}.")
            return Task(family, lang, tpl("rate").format(c1=c1, c2=c2), turns, ans,
                        lambda r: [str(_result(r)["rate"])], ["get_exchange_rate"])
        n = _num(rng, 2, 20000, decimals=0.1)
        while float(n) == 1:
            n = _num(rng, 2, 20000)
        turns = [[call("get_exchange_rate", from_currency=a, to_currency=b, amount=float(n) if "." in n else int(n))]]
        ans = lambda r: (f"{n}{c1}大约可以换{_result(r)['converted']}{c2}（汇率{_result(r)['rate']}）。"  # noqa: E731
                         if lang == "zh" else
                         f"{n} {c1} is about {_result(r)['converted']} {c2} (rate {_result(r)['rate']}).")
        return Task(family, lang, tpl("fx").format(n=n, c1=c1, c2=c2), turns, ans,
                    lambda r: [str(_result(r)["converted"])], ["get_exchange_rate"])
    if family == "weather":
        pair = rng.choice(WEATHER_CITIES)
        c = pair[0] if (lang == "zh") == any("\u4e00" <= ch <= "\u9fff" for ch in pair[0]) else pair[1]
        turns = [[call("get_current_weather", location=c)]]

        def ans(r):
            d = _result(r)
            return (f"{c}现在{d['condition']}，气温{d['temperature']}，湿度{d['humidity']}。" if lang == "zh"
                    else f"It is {d['condition']} in {c}, {d['temperature']}, humidity {d['humidity']}.")
        return Task(family, lang, tpl("weather").format(c=c), turns, ans,
                    lambda r: [_result(r)["temperature"].rstrip("°C")], ["get_current_weather"])
    if family == "translate":
        zh_text, en_text = rng.choice(list(PHRASES.items()))
        to_en = rng.random() < 0.5
        text, target = (zh_text, "english") if to_en else (en_text, "chinese")
        q = tpl("translate_en" if to_en else "translate_zh").format(t=text)
        turns = [[call("translate_text", text=text, target_language=target)]]
        ans = lambda r: (f"“{text}”的翻译是：{_result(r)['translated_text']}" if lang == "zh"  # noqa: E731
                         else f"\"{text}\" translates to: {_result(r)['translated_text']}")
        return Task(family, lang, q, turns, ans, lambda r: [_result(r)["translated_text"]], ["translate_text"])
    if family == "random":
        lo = rng.randint(0, 500)
        hi = lo + int(_num(rng, 1, 9999))
        turns = [[call("random_number", min=lo, max=hi)]]
        ans = lambda r: (f"随机数是 {_result(r)['result']}。" if lang == "zh"  # noqa: E731
                         else f"Your random number is {_result(r)['result']}.")
        return Task(family, lang, tpl("random").format(a=lo, b=hi), turns, ans,
                    lambda r: [str(_result(r)["result"])], ["random_number"])
    if family == "length":
        words = WORDS_ZH if lang == "zh" else WORDS_EN
        text = ("" if lang == "zh" else " ").join(rng.choice(words) for _ in range(rng.randint(1, 5)))
        turns = [[call("text_length", text=text)]]
        ans = lambda r: (f"“{text}”一共有{_result(r)['characters']}个字符。" if lang == "zh"  # noqa: E731
                         else f"\"{text}\" has {_result(r)['characters']} characters.")
        return Task(family, lang, tpl("length").format(t=text), turns, ans,
                    lambda r: [str(_result(r)["characters"])], ["text_length"])
    if family == "par_weather":
        p1, p2 = rng.sample(WEATHER_CITIES, 2)
        pick = lambda p: p[0] if (lang == "zh") == any("\u4e00" <= ch <= "\u9fff" for ch in p[0]) else p[1]  # noqa
        c1, c2 = pick(p1), pick(p2)
        turns = [[call("get_current_weather", location=c1), call("get_current_weather", location=c2)]]
        ans = lambda r: (f"{c1}现在{_result(r, 0, 0)['temperature']}，{c2}现在{_result(r, 0, 1)['temperature']}。"  # noqa
                         if lang == "zh" else f"{c1} is {_result(r, 0, 0)['temperature']} and {c2} is "
                                              f"{_result(r, 0, 1)['temperature']} now.")
        return Task(family, lang, tpl("par_weather").format(c1=c1, c2=c2), turns, ans,
                    lambda r: [_result(r, 0, 0)["temperature"].rstrip("°C"),
                               _result(r, 0, 1)["temperature"].rstrip("°C")], ["get_current_weather"])
    if family == "par_time":
        z1, z2 = rng.sample([z for z in ZONES if z[2] not in ("Asia/Shanghai",)] + [ZONES[0]], 2)
        c1, c2 = (z1[0], z2[0]) if lang == "zh" else (z1[1], z2[1])
        turns = [[call("get_current_time", timezone=z1[2]), call("get_current_time", timezone=z2[2])]]
        hm = lambda r, j: _result(r, 0, j)["datetime"][11:16]  # noqa: E731
        ans = lambda r: (f"{c1}现在是{hm(r, 0)}，{c2}现在是{hm(r, 1)}。" if lang == "zh"  # noqa: E731
                         else f"It is {hm(r, 0)} in {c1} and {hm(r, 1)} in {c2}.")
        return Task(family, lang, tpl("par_time").format(c1=c1, c2=c2), turns, ans,
                    lambda r: [hm(r, 0), hm(r, 1)], ["get_current_time"])
    if family == "chain_split":
        a = rng.choice([c for c in CURRENCIES if c != "CNY"])
        for _ in range(100):  # a split that comes out in cents, so the answer quotes a short number
            n, k = _num(rng, 10, 5000), rng.randint(2, 9)
            converted = json.loads(run_tool("get_exchange_rate", {"from_currency": a, "to_currency": "CNY",
                                                                  "amount": int(n)})[0])["converted"]
            if round(converted * 100) % k == 0:
                break
        c1 = _pick(rng, lang, CURRENCIES[a])
        first = call("get_exchange_rate", from_currency=a, to_currency="CNY", amount=int(n))
        q = tpl("chain_split").format(n=n, c1=c1, k=k)
        # The second call is filled in from the first result when the conversation is built (see `play`).
        turns = [[first], [call("calculate_math", expression=lambda r: f"{_result(r)['converted']}/{k}")]]
        ans = lambda r: (f"{n}{c1}约合{_result(r)['converted']}元，平分给{k}个人，每人约{_result(r, 1)['result']}元。"  # noqa
                         if lang == "zh" else f"{n} {c1} is about {_result(r)['converted']} yuan; split among {k} "
                                              f"people, each gets about {_result(r, 1)['result']} yuan.")
        return Task(family, lang, q, turns, ans, lambda r: [str(_result(r, 1)["result"])],
                    ["get_exchange_rate", "calculate_math"])
    if family == "chain_f":
        pair = rng.choice(WEATHER_CITIES)
        c = pair[0] if (lang == "zh") == any("\u4e00" <= ch <= "\u9fff" for ch in pair[0]) else pair[1]
        turns = [[call("get_current_weather", location=c)],
                 [call("unit_converter", value=lambda r: int(_result(r)["temperature"].rstrip("°C")),
                       from_unit="celsius", to_unit="fahrenheit")]]
        ans = lambda r: (f"{c}现在{_result(r)['temperature']}，约合{_result(r, 1)['result']}华氏度。"  # noqa: E731
                         if lang == "zh" else f"It is {_result(r)['temperature']} in {c}, about "
                                              f"{_result(r, 1)['result']} °F.")
        return Task(family, lang, tpl("chain_f").format(c=c), turns, ans, lambda r: [str(_result(r, 1)["result"])],
                    ["get_current_weather", "unit_converter"])
    if family == "err_weather":
        c = rng.choice(UNKNOWN_CITIES)[0 if lang == "zh" else 1]
        turns = [[call("get_current_weather", location=c)]]
        ans = lambda r: (f"抱歉，暂时查不到{c}的天气数据。" if lang == "zh"  # noqa: E731
                         else f"Sorry, I could not get the weather for {c}: the tool has no data for it.")
        return Task(family, lang, tpl("err_weather").format(c=c), turns, ans, lambda r: [c], ["get_current_weather"])
    if family == "err_div":
        a = _num(rng)
        turns = [[call("calculate_math", expression=f"{a}/0")]]
        ans = lambda r: ("除数不能为0，这个算式没有结果。" if lang == "zh"  # noqa: E731
                         else "Division by zero is undefined, so this has no result.")
        return Task(family, lang, tpl("err_div").format(a=a), turns, ans,
                    lambda r: ["0" if lang == "zh" else "zero"], ["calculate_math"])
    if family == "chat":
        pool = [c for c in CHAT if (lang == "zh") == any("\u4e00" <= ch <= "\u9fff" for ch in c[0])]
        q, a = rng.choice(split_templates(pool, part) if part == "eval" else pool)
        return Task(family, lang, q, [], lambda r: a, lambda r: [], [])
    raise ValueError(f"unknown family {family!r}")


def play(task: Task) -> List[List[dict]]:
    """Run the gold calls turn by turn; arguments given as functions are computed from the earlier results."""
    done: List[List[dict]] = []
    for turn in task.turns:
        out = []
        for c in turn:
            args = {k: (v(done) if callable(v) else v) for k, v in c["arguments"].items()}
            result, ok = run_tool(c["name"], args)
            out.append({"name": c["name"], "arguments": args, "result": result, "ok": ok})
        done.append(out)
    return done


def offered_tools(rng: random.Random, needed: List[str]) -> List[str]:
    """The needed tools plus a few others (sometimes all), in random order."""
    others = [t for t in TOOL_NAMES if t not in needed]
    # Mostly two or three tools (short prompts: a small model pays for every token), now and then all of them.
    extra = others if rng.random() < 0.05 else rng.sample(others, rng.choice([0, 1, 1, 2, 2, 3]) or (not needed))
    tools = list(needed) + list(extra)
    rng.shuffle(tools)
    return tools


FAMILIES = {  # family -> share of the mix
    "calc": 0.22, "unit": 0.1, "time": 0.06, "fx": 0.08, "rate": 0.03, "weather": 0.07, "translate": 0.05,
    "random": 0.04, "length": 0.04, "par_weather": 0.04, "par_time": 0.03, "chain_split": 0.05, "chain_f": 0.04,
    "err_weather": 0.02, "err_div": 0.02, "chat": 0.07,
}


def draw_family(rng: random.Random) -> str:
    return rng.choices(list(FAMILIES), weights=list(FAMILIES.values()))[0]


ERROR_FAMILIES = ("err_weather", "err_div")


def works(task: Task, played) -> bool:
    """Every gold call succeeds (a random 7/(3-3) is redrawn), except in the families that teach errors."""
    return task.family in ERROR_FAMILIES or all(c["ok"] for turn in played for c in turn)


def call_keys(played: List[List[dict]]) -> List[str]:
    return [json.dumps([c["name"], normalize_arguments(c["name"], c["arguments"])], sort_keys=True,
                       ensure_ascii=False) for turn in played for c in turn]


def sft_record(rng: random.Random, task: Task, played, tools: List[str], bare: bool = False) -> dict:
    """One SFT conversation. `bare`: without the system prompt and its tool list (see --bare_share)."""
    system = {"role": "system", "content": rng.choice(SYSTEMS), "tools": tool_schemas(tools)}
    conv = ([] if bare else [system]) + [{"role": "user", "content": task.question}]
    for turn in played:
        conv.append({"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in turn]})
        conv += [{"role": "tool", "content": c["result"]} for c in turn]
    conv.append({"role": "assistant", "content": task.answer_fn(played)})
    return {"conversations": conv}


def rl_record(rng: random.Random, task: Task, played, tools: List[str]) -> dict:
    system = {"role": "system", "content": rng.choice(SYSTEMS), "tools": json.dumps(tool_schemas(tools),
                                                                                      ensure_ascii=False)}
    return {"conversations": [system, {"role": "user", "content": task.question},
                              {"role": "assistant", "content": ""}],
            "gt": task.gt_fn(played), "n_calls": sum(len(t) for t in played)}


def eval_record(task: Task, played, tools: List[str], i: int) -> dict:
    gt = task.gt_fn(played)
    answer = None if task.family == "chat" or task.family in ERROR_FAMILIES else [gt if len(gt) > 1 else gt[0]]
    return {"id": f"{task.family}-{task.lang}-{i:03d}", "question": task.question, "tools": tools,
            "calls": [{"name": c["name"], "arguments": c["arguments"]} for turn in played for c in turn],
            "answer": answer}


def generate(seed: int, n_sft: int, n_rl: int, n_eval: int, families: Optional[Dict[str, float]] = None,
             bare_share: float = 0.0):
    """-> (sft records, agent-RL records, eval tasks). Eval first: its calls are then kept out of the rest."""
    fams = families or FAMILIES
    rng = random.Random(seed)
    evals, held = [], set()
    # Every family in turn, both languages; not the error ones: an eval task's gold calls must succeed.
    eval_fams = [f for f in fams if f not in ERROR_FAMILIES]
    i = 0
    while len(evals) < n_eval:
        fam, lang = eval_fams[i % len(eval_fams)], "zh" if (i // len(eval_fams)) % 2 == 0 else "en"
        task = make_task(rng, fam, lang, "eval")
        played = play(task)
        if not works(task, played):
            continue
        tools = offered_tools(rng, task.tools)
        evals.append(eval_record(task, played, tools, len(evals)))
        # Calls with drawn numbers are held out; calls over the tools' finite tables (a city's weather or time, a
        # phrase) cannot be: the tool knows nothing else, so those eval tasks differ by their templates.
        held.update(k for k in call_keys(played) if any(ch.isdigit() for ch in k))
        i += 1
    held_questions = {e["question"] for e in evals}

    def draw(n, make):
        out = []
        while len(out) < n:
            task = make_task(rng, rng.choices(list(fams), weights=list(fams.values()))[0],
                             rng.choice(["zh", "en"]), "train")
            played = play(task)
            if not works(task, played) or task.question in held_questions or held.intersection(call_keys(played)):
                continue  # keep the eval's calls unseen
            out.append(make(rng, task, played, offered_tools(rng, task.tools)))
        return out

    sft = draw(n_sft, lambda rng, task, played, tools: sft_record(rng, task, played, tools,
                                                                  bare=rng.random() < bare_share))
    rl = draw(n_rl, rl_record) if n_rl else []
    return sft, [r for r in rl if r["gt"]], evals


def copy_texts(rng: random.Random, n: int) -> List[dict]:
    """Pretraining texts that are copies: a random span (numbers, expressions, names, words) and the same span again
    (quoted, after a colon, or as JSON), e.g. `卢布 4821 Tokyo 3.5*17 => "卢布 4821 Tokyo 3.5*17"`.

    Why: copying is done by "induction heads" (attend to where the current token appeared before, copy the token
    that followed it), and a small model trained on tool calls alone forms them late or never (README "Tool use":
    exact arguments stayed at 0% after 20 minutes). On spans that can only be predicted by copying, they form in a
    couple of minutes, and tool SFT then starts from a model that copies."""
    units = [n for _, zh, en in UNITS.values() for n in zh + en]
    names = [n for zh, en in CURRENCIES.values() for n in zh + en] + [n for z in ZONES for n in z[:2]] + units
    ops = ["+", "-", "*", "/", "**", " + ", " * ", "×", "÷"]

    def item():
        r = rng.random()
        if r < 0.4:
            return _num(rng, 1, 99999, decimals=0.2)
        if r < 0.55:
            return f"{_num(rng, 1, 9999, decimals=0.1)}{rng.choice(ops)}{_num(rng, 1, 999)}"
        if r < 0.75:
            return rng.choice(names)
        return rng.choice(WORDS_ZH + WORDS_EN)

    # Half the texts put the span inside a phrase (after a space or a Chinese word, as in a question) and copy it
    # into a JSON string, as a tool call does. Why: the tokenizer splits a number differently there -- " 93.2" in
    # a question is [" 9", "3", ".", "2"], in `"93.2"` it is ["9", "3", ".", "2"] -- so the first token of an
    # argument is never the token the model saw; an induction head copies only identical tokens. A tool-SFT model
    # copied the rest of an argument (91% of its tokens right, teacher-forced) and got that first token wrong.
    lead_en = ["say", "repeat", "note", "copy", "write down", "keep", "read", "the value is", "input", "use"]
    lead_zh = ["记下", "复述", "输入", "抄写", "请用", "数值是", "读一下", "保存"]
    out = []
    for _ in range(n):
        span = " ".join(item() for _ in range(rng.randint(1, 6)))
        if rng.random() < 0.5:
            form = rng.choice(['{s} => "{s}"', "{s}\n{s}", "{s}：{s}", '{{"text": "{s}"}} {s}', "<{s}> <{s}>"])
            out.append({"text": form.format(s=span)})
            continue
        en = rng.random() < 0.5
        phrase = (f"{rng.choice(lead_en)} {span}{rng.choice(['', '?', '.', ' please'])}" if en else
                  f"{rng.choice(lead_zh)}{span}{rng.choice(['', '？', '。', '吧'])}")
        key = rng.choice(["text", "value", "expression", "location", "x"])
        out.append({"text": f'{phrase} => {{"{key}": "{span}"}}'})
    return out


GSM8K_SYSTEM = ("You are a careful math assistant. Use the calculate_math tool for the arithmetic, then give the "
                "final answer as a number.")


def convert_gsm8k(src, limit: int = 0) -> List[dict]:
    """GSM8K {"question", "answer": "... #### N"} records -> calculator tasks in upstream's agent_rl.jsonl layout
    (system + calculate_math, the question, a placeholder assistant turn, gt = [N]); the first `limit` if given."""
    tools = json.dumps(tool_schemas(["calculate_math"]), ensure_ascii=False)
    out = []
    for lineno, rec in iter_jsonl(src):
        if not (isinstance(rec, dict) and isinstance(rec.get("question"), str) and isinstance(rec.get("answer"), str)):
            raise DataFormatError(f'{src}:{lineno}: expected a GSM8K record {{"question", "answer": "... #### N"}}')
        gold = gold_number(rec["answer"])
        if gold is None:
            raise DataFormatError(f"{src}:{lineno}: the answer has no '#### N' line")
        out.append({"conversations": [{"role": "system", "content": GSM8K_SYSTEM, "tools": tools},
                                      {"role": "user", "content": rec["question"].strip()},
                                      {"role": "assistant", "content": ""}],
                    "gt": [format_number(gold)]})
        if limit and len(out) >= limit:
            break
    return out


def write_jsonl(path: Path, records: List[dict]):
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def main(argv=None):
    p = argparse.ArgumentParser(description="Generate tool-use SFT, agent-RL and held-out eval data (seeded)")
    p.add_argument("--out_dir", type=str, default=str(ROOT / "out" / "tool_data"))
    p.add_argument("--sft", type=int, default=20000, help="SFT conversations")
    p.add_argument("--rl", type=int, default=2000, help="agent-RL tasks (records without a gt are left out)")
    p.add_argument("--eval", type=int, default=200, help="held-out eval tasks (held-out templates and calls)")
    p.add_argument("--bare_share", type=float, default=0.0,
                   help="share of SFT conversations written without the system prompt and its tool list: ~6x "
                        "shorter, so the same compute shows the model ~6x more calls to copy (a curriculum)")
    p.add_argument("--copy", type=int, default=0,
                   help="also write copy.jsonl: this many copy texts to pretrain on first (see copy_texts)")
    p.add_argument("--seed", type=int, default=20261207)
    p.add_argument("--from_gsm8k", type=str, default=None, metavar="GSM8K_JSONL",
                   help="instead: convert a GSM8K file into calculator tasks for train_agent.py, written to "
                        "OUT_DIR/agent_gsm8k.jsonl (--rl caps their number; 0 = all)")
    args = p.parse_args(argv)
    if args.from_gsm8k:
        tasks = convert_gsm8k(args.from_gsm8k, args.rl)
        write_jsonl(Path(args.out_dir) / "agent_gsm8k.jsonl", tasks)
        print(f"wrote {len(tasks)} calculator tasks from {args.from_gsm8k} to {Path(args.out_dir) / 'agent_gsm8k.jsonl'}")
        return
    sft, rl, evals = generate(args.seed, args.sft, args.rl, args.eval, bare_share=args.bare_share)
    out = Path(args.out_dir)
    if args.copy:
        write_jsonl(out / "copy.jsonl", copy_texts(random.Random(args.seed + 1), args.copy))
        print(f"wrote {args.copy} copy texts (pretraining format) to {out / 'copy.jsonl'}")
    for name, recs in (("sft.jsonl", sft), ("agent_rl.jsonl", rl), ("eval.jsonl", evals)):
        write_jsonl(out / name, recs)
        print(f"wrote {len(recs)} records to {out / name}")


if __name__ == "__main__":
    run_main(main)
