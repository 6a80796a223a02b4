"""Reading and checking answers, written once: every rule reward and every eval that scores an answer uses it.

A reply is scored in four places: the GSM8K reward of the RL stages (trainer/rl_utils.py gsm8k_reward), the answer
term of the agent reward (trainer/train_agent.py), the GSM8K benchmark (scripts/eval_benchmark.py) and the
tool-call eval (scripts/eval_toolcall.py). With one copy of the rules, an output the eval counts as right is
exactly an output the reward pays for, and a fix to the rules reaches all four at once.

  numbers     NUMBER (the pattern), numbers_in(text), as_number(x), same_number(a, b)
  GSM8K       final_number(reply): the model's final answer; gold_number(reference): the number after '####'
  golds       found(text, gold): one gold answer in a reply; answer_fraction(text, golds): the agent reward's
              answer term; answer_matches(text, alternatives): the tool eval's check, built on answer_fraction
              so that the two cannot disagree; squash(text): the form texts are compared in

Standard library only: the server and light tools import it without torch.
"""
import math
import re
from typing import List, Optional, Sequence

# One number as people and models write it: 1081, 1,081, 3.50, .5, 1.5e3, -3, −3 (U+2212, the typographic minus).
NUMBER = re.compile(r"""
    (?<![\d.])                    # never start inside another number: "512" holds no "12", "1.25" no "25"
    (?:(?<![A-Za-z\d)])[-\u2212])?  # a sign, unless the minus joins two things (below)
    (?:
        \d{1,3}(?:,\d{3})+(?!\d)  # thousands separators: only between groups of exactly three digits
        (?:\.\d+)?
      | \d+(?:\.\d+)?             # plain; a sentence's full stop is no decimal point ("5." is 5)
      | \.\d+                     # .5
    )
    (?:[eE][-+]?\d+)?             # 1.5e3, 2E-4: how tool results and Python print some floats
""", re.VERBOSE)
# Where a minus belongs is the subtle part. Right after a digit, a Latin letter or ")" it joins two things: "5-3"
# is a subtraction (5 and 3), "GPT-4" a name, "f(x)-1" an expression, so the number after it is positive. Anywhere
# else ("= -3", "drops to -3", "温度-5度") it is the number's sign.
# Commas: "1,081" is one number, while "3,4,5" (a list) and "1,2345" are several.

# Numbers equal to 6 decimal places, or to 9 significant digits when large. A relative 1e-6 alone would call
# 1,000,001 equal to 1,000,000 (GSM8K has answers that large); 9 digits still absorb float noise in a tool's
# printed result (12 significant digits, model/tools.py clean_number).
ABS_TOL, REL_TOL = 1e-6, 1e-9

# GSM8K's final-answer line, "#### 72" (also "#### $18.50"); a reply that ends the same way is read the same way.
# Verbose like NUMBER, whose pattern it embeds, so "#" is escaped: bare, it would start a comment.
FINAL_MARK = re.compile(r"\#{4} \s* \$? \s* (" + NUMBER.pattern + ")", re.VERBOSE)
# The R1-style answer span; an unclosed one (a reply cut at the token limit) runs to the end of the text.
ANSWER_SPAN = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)


# ================================================================================================================
# Numbers
# ================================================================================================================
def _value(token: str) -> Optional[float]:
    """A NUMBER match -> float; None for one too large for a float (1e999), which no answer is."""
    x = float(token.replace(",", "").replace("\u2212", "-"))
    return x if math.isfinite(x) else None


def numbers_in(text: Optional[str]) -> List[float]:
    """Every number in the text, in order: "5-3 = 2" -> [5, 3, 2], "总共 1,081 元" -> [1081], "= -3" -> [-3]."""
    values = (_value(m.group()) for m in NUMBER.finditer(text or ""))
    return [x for x in values if x is not None]


def as_number(x) -> Optional[float]:
    """x as a float if it is a number (not a bool) or a string that is exactly one number (" 1,081 ", "-3", "1e3");
    else None ("42 apples", "1:30", "$5" are texts)."""
    if isinstance(x, bool):  # True is an int to Python, but no answer means 1 by it
        return None
    if isinstance(x, (int, float)):
        try:
            x = float(x)
        except OverflowError:  # an int beyond float range
            return None
        return x if math.isfinite(x) else None
    if isinstance(x, str):
        m = NUMBER.fullmatch(x.strip())
        return _value(m.group()) if m else None
    return None


def same_number(a: Optional[float], b: Optional[float]) -> bool:
    """Whether a equals the reference b: |a - b| <= max(ABS_TOL, REL_TOL * |b|). False if either is None (no
    answer is never right)."""
    return a is not None and b is not None and abs(a - b) <= max(ABS_TOL, REL_TOL * abs(b))


# ================================================================================================================
# GSM8K: one final number
# ================================================================================================================
def gold_number(text: Optional[str]) -> Optional[float]:
    """The number after the last '####' (a GSM8K reference solution "... #### 1,234" -> 1234.0); None without one."""
    marks = FINAL_MARK.findall(text or "")
    return _value(marks[-1]) if marks else None


def final_number(text: Optional[str]) -> Optional[float]:
    """The model's final answer: '#### N' if the reply has one, else the last number inside the last <answer> span
    that holds a number, else the last number in the text; None if there is no number at all."""
    marked = gold_number(text)
    if marked is not None:
        return marked
    for span in reversed(ANSWER_SPAN.findall(text or "")):
        nums = numbers_in(span)
        if nums:
            return nums[-1]
    nums = numbers_in(text)
    return nums[-1] if nums else None


# ================================================================================================================
# Gold answers in a reply
# ================================================================================================================
def squash(text: str) -> str:
    """Text without whitespace, casefolded: "Happy  Birthday" and "happy birthday" compare equal."""
    return re.sub(r"\s+", "", text).casefold()


def found(text: Optional[str], gold) -> bool:
    """Whether the reply holds `gold`. A gold that is a number (as_number) matches any number in the text
    numerically ("1,081" and "1081.0" are 1081); any other gold matches as a substring, case and whitespace
    ignored. An empty gold is never found."""
    if text is None:
        return False
    value = as_number(gold)
    if value is not None:
        return any(same_number(x, value) for x in numbers_in(text))
    needle = squash(str(gold))
    return bool(needle) and needle in squash(text)


def answer_fraction(text: Optional[str], golds: Sequence) -> float:
    """The fraction of `golds` found in the reply (the agent reward's answer term); 0 for no reply (None: the
    episode did not finish) or no golds."""
    if text is None or not golds:
        return 0.0
    return sum(found(text, g) for g in golds) / len(golds)


def answer_matches(text: Optional[str], alternatives) -> bool:
    """Whether the reply holds one of the acceptable answers (the tool eval's check). `alternatives` is a list of
    answers, any one will do; a list inside it needs all of its parts (two lookups, both results in the reply).
    None accepts any non-empty reply. An alternative counts when answer_fraction of its parts is 1, so
    answer_matches(text, [golds]) == (answer_fraction(text, golds) == 1.0) by construction."""
    if text is None:
        return False
    if alternatives is None:
        return bool(text.strip())
    if not isinstance(alternatives, (list, tuple)):  # a single answer
        alternatives = [alternatives]
    return any(answer_fraction(text, alt if isinstance(alt, (list, tuple)) else [alt]) == 1.0
               for alt in alternatives)
