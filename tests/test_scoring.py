"""model/scoring.py: reading numbers and final answers out of replies, and the checks built on them; and that the
rewards and the evals that share it agree on the same outputs (an eval may not count as right what the reward
does not pay for, or the other way round)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import scoring  # noqa: E402
from model.scoring import (answer_fraction, answer_matches, as_number, final_number, found,  # noqa: E402
                           gold_number, numbers_in, same_number)


# ------------------------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("text, numbers", [
    ("总共 1,081 元", [1081]), ("12,345,678 people", [12345678]), ("$1,234.50", [1234.5]),
    ("3,4,5", [3, 4, 5]), ("1,2345", [1, 2345]), ("first 12, then 7", [12, 7]),    # not thousands separators
    ("5-3 = 2", [5, 3, 2]), ("2023-05-01", [2023, 5, 1]),                            # a minus after a digit
    ("GPT-4 and COVID-19", [4, 19]), ("f(x)-1", [1]),                                # ... a letter or ")"
    ("x = -3", [-3]), ("drops to \u22123", [-3]), ("温度-5度", [-5]), ("-0.5", [-0.5]),  # signs, U+2212 too
    ("3.50", [3.5]), (".5 and 0.25", [0.5, 0.25]), ("The answer is 5.", [5]),      # a full stop is no point
    ("1.5e3 m and 2E-4", [1500, 0.0002]), ("5e-3", [0.005]),                         # scientific notation
    ("512", [512]), ("v1.2.3", [1.2]),                                               # never inside a number
    ("no digits", []), ("", []), (None, []), ("1e999", []),                          # too large: no answer
])
def test_numbers_in(text, numbers):
    assert numbers_in(text) == pytest.approx(numbers)


def test_as_number_and_same_number():
    assert as_number(" 1,081 ") == 1081 and as_number("-3") == -3 and as_number("\u22123") == -3
    assert as_number("1e3") == 1000 and as_number(42) == 42 and as_number(43.4) == 43.4
    for text in ("42 apples", "1:30", "$5", "5-3", "", "1,2", "nan", "inf", True, None, [1], float("nan"), 10 ** 400):
        assert as_number(text) is None, text
    # one tolerance everywhere: 6 decimal places, or 9 significant digits for large numbers
    assert same_number(1081.0000004, 1081) and same_number(0.1 + 0.2, 0.3) and same_number(-3, -3.0)
    assert not same_number(43.41, 43.4) and not same_number(3, -3) and not same_number(1.000002, 1)
    assert not same_number(1_000_001, 1_000_000)  # a relative 1e-6 alone would call these equal
    assert not same_number(None, 1) and not same_number(1, None)


# ------------------------------------------------------------------------------------------------ final answers
@pytest.mark.parametrize("text, value", [
    ("She has 3 + 4 = 7 apples.\n#### 7", 7), ("#### 1,234", 1234), ("#### -5", -5), ("#### \u22125", -5),
    ("#### $18.50", 18.5), ("#### 12\nthen 13", 12),                                 # '####' wins
    ("<think>\n2 * 3 = 6, plus 4\n</think>\n<answer>\n10\n</answer>", 10),
    ("<answer>12</answer> but maybe 13", 12),                                         # the tagged answer wins
    ("<answer>1</answer> <answer>2 or 3</answer>", 3),                                # the last span, last number
    ("<answer>no idea</answer> I computed 9", 9),                                     # a span without a number
    ("<answer>the total is 7", 7),                                                    # cut before </answer>
    ("first 12, then 7 more, total 19", 19), ("so he pays 3.50.", 3.5), ("I don't know", None), ("", None),
])
def test_final_number(text, value):
    assert final_number(text) == (value if value is None else pytest.approx(value))


def test_gold_number():
    assert gold_number("He pays 2*3=<<2*3=6>>6.\n#### 1,234") == 1234
    assert gold_number("#### -5") == -5 and gold_number("#### 3.5") == 3.5 and gold_number("####$18.50") == 18.5
    assert gold_number("no marker 12") is None and gold_number("#### none") is None and gold_number(None) is None


# ------------------------------------------------------------------------------------------------ gold answers
def test_found_answer_fraction_and_answer_matches():
    assert found("总共 1,081 元", "1081") and found("总共 1081.0 元", "1,081") and found("= -762", -762)
    assert not found("5-3 = 2", "-3") and found("5-3 = 2", 3)
    assert found("It says: Happy  Birthday!", "happy birthday") and not found("生日快乐", "Happy birthday")
    assert found("Paris", "paris") and not found("anything", "") and not found(None, "1")
    assert answer_fraction("北京28°C", ["28", "18"]) == 0.5 and answer_fraction("北京28°C，成都18°C", ["28", "18"]) == 1
    assert answer_fraction(None, ["1"]) == 0 and answer_fraction("1", []) == 0
    assert answer_matches("1.26", ["9", "1.26"]) and answer_matches("北京28°C，成都18°C", [["28", "18"]])
    assert not answer_matches("北京28°C", [["28", "18"]]) and not answer_matches("42", [[]])
    assert answer_matches("anything", None) and not answer_matches("  ", None) and not answer_matches(None, None)
    assert answer_matches("it is 42", "42") and not answer_matches(None, ["42"])


def test_standard_library_only():
    """The server and light tools import it without torch."""
    code = "import sys; import model.scoring; assert not {'torch', 'numpy'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# ------------------------------------------------------------------------------------------------ reward == eval
# (reply, golds, right): realistic final replies of the tool tasks; `right` pins what both sides must say.
TOOL_REPLIES = [
    ("总共 1,081 元。", ["1081"], True),
    ("23 × 47 = 1081", ["1,081"], True),
    ("It drops to \u22123 degrees.", ["-3"], True),
    ("5-3 = 2, so 2 apples are left", ["-3"], False),
    ("<think>6*7 = 42</think><answer>42</answer>", ["42"], True),
    ("100 USD is about 723.00 CNY (rate 7.23).", ["723"], True),
    ("The exchange rate is 1.26491.", ["1.26491"], True),
    ("About 43.41 kg.", [43.4], False),
    ("The distance is 1.5e3 meters.", ["1500"], True),
    ("It says: Happy  Birthday!", ["happy birthday"], True),
    ("生日快乐", ["Happy birthday"], False),
    ("北京28°C，成都18°C", ["28", "18"], True),
    ("北京28°C，成都晴", ["28", "18"], False),
    ("The meeting ends at 10:30.", ["10:30"], True),
    ("The capital is Paris, population 2,161,000.", ["Paris", "2161000"], True),
    ("", ["1"], False),
]


def test_tool_eval_agrees_with_agent_reward():
    """eval_toolcall's answer check == (the agent reward's answer term == 1) on every reply."""
    from scripts import eval_toolcall
    assert eval_toolcall.answer_matches is scoring.answer_matches  # no second copy of the rules
    for reply, golds, right in TOOL_REPLIES:
        reward = answer_fraction(reply, golds)
        assert eval_toolcall.answer_matches(reply, [golds]) == (reward == 1.0) == right, (reply, golds, reward)


# (reply, GSM8K reference, right): replies with '####' or <answer> spans, and a few plain ones.
GSM8K_REPLIES = [
    ("<think>3 + 4 = 7</think>\n<answer>7</answer>", "3+4=<<3+4=7>>7\n#### 7", True),
    ("So the total is 1,234.\n#### 1,234", "#### 1234", True),
    ("#### 12\nWait, maybe 13.", "#### 12", True),
    ("<answer>The answer is $18.50.</answer>", "It costs 18.50.\n#### 18.5", True),
    ("<answer>\u22125</answer>", "#### -5", True),
    ("<answer>12</answer> but maybe 13", "#### 13", False),
    ("5-3 = 2\n<answer>2</answer>", "#### 2", True),
    ("答案：<answer>72 个</answer>", "48/2 = <<48/2=24>>24\n#### 72", True),
    ("<answer>no idea</answer> I computed 9 earlier", "#### 9", True),
    ("#### 1000000", "#### 1,000,001", False),
    ("<answer>0.5</answer>", "#### .5", True),
    ("The answer is 7", "#### 7", True),
    ("I don't know", "#### 3", False),
    ("<answer>the total is 40", "#### 40", True),
]


def test_gsm8k_reward_agrees_with_gsm8k_eval(tokenizer):
    """rl_utils.gsm8k_reward == eval_benchmark's per-sample `correct`, through evaluate_gsm8k itself."""
    from scripts import eval_benchmark
    from trainer.rl_utils import gsm8k_reward
    records = [{"question": f"q{i}", "answer": gold} for i, (_, gold, _) in enumerate(GSM8K_REPLIES)]
    replies = iter(reply for reply, _, _ in GSM8K_REPLIES)
    result = eval_benchmark.evaluate_gsm8k(records, tokenizer, lambda prompts: [next(replies) for _ in prompts],
                                           batch_size=5)
    for (reply, gold, right), sample in zip(GSM8K_REPLIES, result["samples"]):
        assert gsm8k_reward(reply, gold) == float(sample["correct"]) == float(right), (reply, gold)
