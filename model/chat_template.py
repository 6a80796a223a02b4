"""One place that knows how each chat template spells its "thinking" switch.

Chat templates disagree on the variable that turns reasoning on or off at generation time:

  MiniMind2 / our tokenizer (model/)   `enable_thinking`: False pre-fills an empty <think></think> block (answer
                                       directly); True or unset leaves the choice to the model
  upstream minimind-3 tokenizer        `open_thinking`: True opens a <think> block for the model to fill; False or
                                       unset pre-fills an empty <think></think> block (its template ALWAYS renders
                                       a <think> block after the assistant header)
  Qwen3 and most other templates       `enable_thinking`, like ours

A request (OpenAI-style server, web demo, dataset flag) says what it wants with any of these names, or inside
`chat_template_kwargs` (vLLM's convention). `thinking_kwargs` turns that into the keyword arguments of
`tokenizer.apply_chat_template` for the template at hand, by reading which switch names its source mentions.

    thinking_kwargs(tokenizer_or_template, enable_thinking=None, open_thinking=None, chat_template_kwargs=None)
        -> dict for apply_chat_template(..., **kwargs)
    thinking_switches(tokenizer_or_template) -> tuple of the switch names the template reads
    template_default(tokenizer_or_template, minimind3, ours) -> upstream minimind-3's value for its template
    add_thinking_arg(parser, *names) / thinking_arg(args): a front end's --enable_thinking 0|1 flag
    split_thinking(text) -> (reasoning, answer): a reply's <think> block split off

Standard library only: the server and light tools import it without torch.
"""
import re
from typing import Optional, Tuple

from model.errors import UserError

THINKING_SWITCHES = ("enable_thinking", "open_thinking")

# apply_chat_template's own parameters: a chat_template_kwargs entry with one of these names would collide with
# (or silently replace) what the caller passes.
RESERVED_KWARGS = frozenset({"conversation", "messages", "tools", "documents", "chat_template", "tokenize",
                             "add_generation_prompt", "continue_final_message", "return_dict", "return_tensors",
                             "padding", "truncation", "max_length", "tokenizer_kwargs", "return_assistant_tokens_mask"})


class ChatTemplateArgumentError(UserError, ValueError):
    """Template arguments that cannot be honoured (a non-boolean switch, switches that disagree, a reserved name)."""


def _template_source(tokenizer_or_template) -> str:
    if tokenizer_or_template is None:
        return ""
    if isinstance(tokenizer_or_template, (str, dict)):
        template = tokenizer_or_template
    else:
        template = getattr(tokenizer_or_template, "chat_template", None)
    if isinstance(template, dict):  # several named templates: any of them may read the switch
        return "\n".join(str(t) for t in template.values())
    return template or ""


def thinking_switches(tokenizer_or_template) -> Tuple[str, ...]:
    """The thinking switch names (of THINKING_SWITCHES) that the template's source mentions, in that order."""
    source = _template_source(tokenizer_or_template)
    return tuple(name for name in THINKING_SWITCHES if re.search(rf"\b{name}\b", source))


def template_default(tokenizer_or_template, minimind3, ours):
    """A default that follows the template: `minimind3` (upstream minimind-3's value) where the template reads
    `open_thinking` (upstream's tokenizer, which always renders a <think> block and whose data habits upstream's
    defaults were tuned for), `ours` elsewhere. Used for --thinking_ratio and the SFT augmentations."""
    return minimind3 if "open_thinking" in thinking_switches(tokenizer_or_template) else ours


def add_thinking_arg(parser, *names: str, help: Optional[str] = None):
    """A front end's thinking switch: `--enable_thinking 0|1` (and `--open_thinking`, upstream minimind-3's
    spelling) unless other `names` are given; unset = the template's default. Read it with `thinking_arg`."""
    parser.add_argument(*(names or ("--enable_thinking", "--open_thinking")), dest="enable_thinking", type=int,
                        default=None, choices=[0, 1],
                        help=help or "1: let the model reason in a <think> block, 0: answer directly (an empty "
                                     "block is pre-filled); unset: the template's default. Passed as the switch "
                                     "the chat template reads: enable_thinking (ours) or open_thinking "
                                     "(upstream minimind-3's)")
    return parser


def thinking_arg(args) -> Optional[bool]:
    """The parsed `add_thinking_arg` flag: True, False or None (the template's default)."""
    return None if args.enable_thinking is None else bool(args.enable_thinking)


def thinking_kwargs(tokenizer_or_template, enable_thinking: Optional[bool] = None,
                    open_thinking: Optional[bool] = None, chat_template_kwargs: Optional[dict] = None) -> dict:
    """Keyword arguments for `tokenizer.apply_chat_template` that carry a request's thinking choice.

    `enable_thinking` and `open_thinking` mean the same thing (True: let the model reason in a <think> block;
    False: answer directly); either may also come inside `chat_template_kwargs`. The choice is passed under
    every switch name the template reads, so one request works with our tokenizer, upstream's minimind-3
    tokenizer and Qwen-style templates alike. No choice (all None) adds no switch: the template's own default.
    A template without a switch gets none (the choice cannot be expressed there; see `thinking_switches`).

    Other `chat_template_kwargs` entries are passed through unchanged (custom template variables). Raises
    ChatTemplateArgumentError if a switch is not a boolean, if the given switches disagree, or if an entry would
    collide with apply_chat_template's own parameters (RESERVED_KWARGS).
    """
    if not isinstance(chat_template_kwargs or {}, dict):
        raise ChatTemplateArgumentError(f"chat_template_kwargs must be an object, got "
                                        f"{type(chat_template_kwargs).__name__}")
    extra = dict(chat_template_kwargs or {})
    reserved = sorted(k for k in extra if k in RESERVED_KWARGS)
    if reserved:
        raise ChatTemplateArgumentError(f"chat_template_kwargs may not set {', '.join(reserved)}: "
                                        f"those are request fields of their own")
    given = [("enable_thinking", enable_thinking), ("open_thinking", open_thinking)]
    given += [(f"chat_template_kwargs.{name}", extra.pop(name)) for name in THINKING_SWITCHES if name in extra]
    choice, source = None, None
    for name, value in given:
        if value is None:
            continue
        if not isinstance(value, bool):
            raise ChatTemplateArgumentError(f"{name} must be true or false, got {value!r}")
        if choice is not None and value != choice:
            raise ChatTemplateArgumentError(f"{source}={str(choice).lower()} and {name}={str(value).lower()} "
                                            f"disagree")
        choice, source = value, name
    if choice is not None:
        extra.update({name: choice for name in thinking_switches(tokenizer_or_template)})
    return extra


def _strip_answer_tags(text: str) -> str:
    return text.replace("<answer>", "").replace("</answer>", "")


def split_thinking(text: str) -> Tuple[str, str]:
    """'<think>\\nR\\n</think>\\n\\nA' -> ('R', 'A'). Also handles a think block opened by the prompt (only
    '</think>' in the text), an unfinished one (only '<think>': all reasoning so far, no answer yet) and
    MiniMind2's <answer></answer> wrapper. Text without tags is all answer."""
    if "</think>" in text:
        head, _, tail = text.partition("</think>")
        reasoning = head.split("<think>", 1)[1] if "<think>" in head else head
        return reasoning.strip(), _strip_answer_tags(tail).strip()
    if "<think>" in text:
        before, _, reasoning = text.partition("<think>")
        return reasoning.strip(), _strip_answer_tags(before).strip()
    return "", _strip_answer_tags(text)
