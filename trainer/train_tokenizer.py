"""
Train MiniMind's tokenizer: a 6400-token byte-level BPE, HuggingFace `tokenizers` style.

    python trainer/train_tokenizer.py --data_path ../shared/data/bench/pretrain.jsonl

Writes <save_dir>/tokenizer.json and <save_dir>/tokenizer_config.json (default
save_dir: <repo root>/model), then reloads them with transformers.AutoTokenizer
and prints a few sanity checks.

Design choices, and why:
  * Byte-level BPE (GPT-2 style): the text is first mapped to bytes, and all 256
    bytes are in the base alphabet, so ANY string (Chinese, emoji, control
    characters...) can be encoded without an <unk> token, and decode(encode(x)) == x.
  * No normalizer: normalization (NFC, lower-casing, ...) would make the round trip
    lossy. The tokenizer sees exactly the bytes the model will see.
  * A tiny vocabulary (6400) because MiniMind is a ~26M-parameter model: with
    hidden size 512 the embedding table alone is 6400 * 512 = 3.3M parameters.
  * Special tokens take the first ids (0, 1, 2) and the chat/reasoning/tool tags
    the next ones, so the ids are stable and easy to remember.

The training logic lives in importable functions (train_tokenizer,
write_tokenizer_config, ...); argparse lives in main().
"""

import argparse
import json
import sys
import time
from itertools import islice
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

# Defaults are resolved from the repository root, never from the current working
# directory, so the script behaves the same wherever it is launched from.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from dataset.lm_dataset import DataFormatError, iter_jsonl  # noqa: E402
from model.errors import run_main  # noqa: E402
DEFAULT_DATA_PATH = REPO_ROOT / "dataset" / "pretrain_hq.jsonl"
DEFAULT_SAVE_DIR = REPO_ROOT / "model"

# -----------------------------------------------------------------------------
# Token inventory. The order of this list IS the id assignment: the BPE trainer
# puts its `special_tokens` first, in order, before any learned token.

# True special tokens: control tokens that decode(..., skip_special_tokens=True) removes.
SPECIAL_TOKENS = [
    "<|endoftext|>",  # 0: document separator; also the pad token and the unk token
    "<|im_start|>",  # 1: start of a chat turn (bos)
    "<|im_end|>",  # 2: end of a chat turn (eos); generation stops here
]
# Tags that must always be a single token (never split by BPE) but that are NOT
# special: they are part of the visible answer. A reasoning model's <think> block
# and a tool call must survive decode(..., skip_special_tokens=True).
TAG_TOKENS = [
    "<think>",  # 3
    "</think>",  # 4
    "<answer>",  # 5
    "</answer>",  # 6
    "<tool_call>",  # 7
    "</tool_call>",  # 8
    "<tool_response>",  # 9
    "</tool_response>",  # 10
]
ADDED_TOKENS = SPECIAL_TOKENS + TAG_TOKENS

PAD_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|endoftext|>"  # never produced in practice: every byte is in the vocab
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
MODEL_MAX_LENGTH = 32768

# -----------------------------------------------------------------------------
# Chat template (Jinja, ChatML). Rendered by tokenizer.apply_chat_template().
#
# Layout of every turn:  <|im_start|>{role}\n{content}<|im_end|>\n
# The SFT loss mask relies on an assistant turn being exactly
#   "<|im_start|>assistant\n" + content + "<|im_end|>" + "\n"
# (the mask covers the content tokens and their <|im_end|>).
#
# Rules:
#   * No default system prompt: without a system message nothing is injected,
#     unless `tools` are passed, in which case a system block describing them is made.
#   * tools: appended to the system prompt inside <tools></tools>, one compact line per tool:
#     name(text_arg, number_arg: number, optional?, choice: a|b): description (strings need no type). Compact on purpose: a small model reads
#     every prompt token, and full JSON schemas cost ~10x more (~600 tokens for two tools with our tokenizer).
#   * assistant.tool_calls (OpenAI shape) -> "<tool_call>\n{json}\n</tool_call>" after the content.
#   * role "tool" -> a user turn with "<tool_response>\n{content}\n</tool_response>";
#     consecutive tool messages share one user turn.
#   * assistant.reasoning_content -> "<think>\n{reasoning}\n</think>\n\n{content}",
#     unless the content already contains <think>.
#   * add_generation_prompt -> "<|im_start|>assistant\n", plus an empty
#     "<think>\n\n</think>\n\n" when enable_thinking is explicitly false.
#
# `tojson` is transformers' version (ensure_ascii=False, keys kept in order).
# Every tag uses "{%-"/"{{-" so that the template's own indentation is not rendered.
# Written as a raw string: "\n" below is a Jinja escape, not a Python one.
CHAT_TEMPLATE = r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages and messages[0].role == 'system' and messages[0].content %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- '# Tools\n<tools>' }}
    {%- for tool in tools %}
        {%- set fn = tool.function if tool.function is defined else tool %}
        {%- set params = fn.parameters if fn.parameters is mapping else {} %}
        {%- set props = params.properties if params.properties is mapping else {} %}
        {%- set required = params.required if params.required is defined else [] %}
        {{- '\n' + fn.name + '(' }}
        {%- for name, p in props.items() %}
            {{- (', ' if not loop.first else '') + name + ('' if name in required else '?') }}
            {%- if p.enum is defined %}
                {{- ': ' + p.enum | join('|') }}
            {%- elif p.type is defined and p.type != 'string' %}
                {{- ': ' + (p.type if p.type is string else p.type | join('|')) }}
            {%- endif %}
        {%- endfor %}
        {{- ')' }}
        {%- if fn.description %}
            {{- ': ' + fn.description }}
        {%- endif %}
    {%- endfor %}
    {{- '\n</tools>\nCall a tool with:\n<tool_call>\n{"name": <tool>, "arguments": {<args>}}\n</tool_call><|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == 'system' and loop.first %}
        {%- if not tools %}
            {{- '<|im_start|>system\n' + content + '<|im_end|>\n' }}
        {%- endif %}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- if message.reasoning_content is string and '<think>' not in content %}
            {{- '<think>\n' + message.reasoning_content + '\n</think>\n\n' }}
        {%- endif %}
        {{- content }}
        {%- if message.tool_calls %}
            {%- for call in message.tool_calls %}
                {%- set fn = call.function if call.function is defined else call %}
                {%- if content or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {{- '<tool_call>\n{"name": ' + (fn.name | tojson) + ', "arguments": ' }}
                {%- if fn.arguments is string %}
                    {{- fn.arguments }}
                {%- elif fn.arguments is defined %}
                    {{- fn.arguments | tojson }}
                {%- else %}
                    {{- '{}' }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or loop.previtem.role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + content + '\n</tool_response>' }}
        {%- if loop.last or loop.nextitem.role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
""".strip()


# -----------------------------------------------------------------------------
# Data: stream the JSONL one record at a time. The pretraining corpus can be many
# GB, so we never build a list of all texts; the trainer consumes a generator.


def iter_texts(data_path, max_lines=None):
    """Yield the "text" field of each record of a JSONL file.

    Blank lines are skipped. A line that is not valid JSON, or has no string
    "text" field, raises DataFormatError (a ValueError) naming "file:line" so it
    is easy to fix. `max_lines` caps the number of records yielded (None = all).
    """
    records = iter_jsonl(data_path)  # the datasets' own reader: file:line errors, one line at a time
    for lineno, record in islice(records, max_lines):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataFormatError(f'{data_path}:{lineno}: expected an object with a string "text" field')
        yield record["text"]


# -----------------------------------------------------------------------------
# Training


def train_tokenizer(data_path, vocab_size=6400, min_frequency=2, max_lines=None, show_progress=True):
    """Train a byte-level BPE on a JSONL corpus and return the `tokenizers.Tokenizer`."""
    min_vocab = len(ADDED_TOKENS) + 256  # added tokens + the 256-byte base alphabet
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size must be at least {min_vocab} (added tokens + 256 bytes), got {vocab_size}")

    tokenizer = Tokenizer(models.BPE())
    # Split on GPT-2's regex (words, numbers, punctuation, whitespace runs) and map bytes
    # to printable characters. add_prefix_space=False: do not invent a leading space,
    # otherwise decode(encode(x)) would not give back x.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        # Listed first, in order, so they get ids 0..len(ADDED_TOKENS)-1.
        special_tokens=[AddedToken(t, normalized=False) for t in ADDED_TOKENS],
        # Seed the vocab with all 256 byte symbols, even those absent from the corpus:
        # this is what makes every possible input representable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(iter_texts(data_path, max_lines), trainer=trainer)

    # The trainer registers everything in `special_tokens` as special=True. Re-declare the
    # tags as ordinary (non-special) added tokens: they keep their ids and stay unsplittable,
    # but skip_special_tokens no longer strips them.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    # add_tokens updates the serialized token list but not every internal cache, so
    # rebuild the tokenizer from its JSON form to get a consistent object.
    tokenizer = Tokenizer.from_str(tokenizer.to_str())

    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(
            f"only {tokenizer.get_vocab_size()} tokens could be learned (wanted {vocab_size}); "
            f"use more data (--max_lines) or a lower --min_frequency / --vocab_size"
        )
    check_added_tokens(tokenizer)
    return tokenizer


def check_added_tokens(tokenizer):
    """Assert the id layout: ADDED_TOKENS[i] has id i, is one token, and has the right special flag."""
    for expected_id, token in enumerate(ADDED_TOKENS):
        assert tokenizer.token_to_id(token) == expected_id, (token, tokenizer.token_to_id(token))
        assert tokenizer.encode(token).ids == [expected_id], (token, tokenizer.encode(token).ids)
    decoder = tokenizer.get_added_tokens_decoder()
    for token_id, added in decoder.items():
        assert added.special == (added.content in SPECIAL_TOKENS), (token_id, added)


# -----------------------------------------------------------------------------
# Saving


def added_token_entry(content):
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": content in SPECIAL_TOKENS,
    }


def write_tokenizer_config(save_dir):
    """Write tokenizer_config.json: what transformers needs on top of tokenizer.json."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,  # the chat template / data pipeline place tokens explicitly
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): added_token_entry(t) for i, t in enumerate(ADDED_TOKENS)},
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": UNK_TOKEN,
        "clean_up_tokenization_spaces": False,  # would alter " ," etc. and break round trips
        "spaces_between_special_tokens": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "chat_template": CHAT_TEMPLATE,
    }
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / "tokenizer_config.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
        f.write("\n")
    return path


def save_tokenizer(tokenizer, save_dir):
    """Write tokenizer.json and tokenizer_config.json into save_dir."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(save_dir / "tokenizer.json"))
    write_tokenizer_config(save_dir)


# -----------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description="Train MiniMind's byte-level BPE tokenizer")
    parser.add_argument("--data_path", type=str, default=str(DEFAULT_DATA_PATH), help='JSONL file of {"text": ...}')
    parser.add_argument("--vocab_size", type=int, default=6400)
    parser.add_argument("--save_dir", type=str, default=str(DEFAULT_SAVE_DIR))
    parser.add_argument("--max_lines", type=int, default=None, help="use only the first N records")
    parser.add_argument("--min_frequency", type=int, default=2, help="min pair count for a merge")
    args = parser.parse_args()

    t0 = time.time()
    tokenizer = train_tokenizer(args.data_path, args.vocab_size, args.min_frequency, args.max_lines)
    print(f"trained in {time.time() - t0:.1f}s: vocab {tokenizer.get_vocab_size()}")
    save_tokenizer(tokenizer, args.save_dir)
    print(f"saved tokenizer.json and tokenizer_config.json to {args.save_dir}")

    # Reload exactly the way the rest of the code base will, and sanity-check.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.save_dir)
    print(f"AutoTokenizer: {type(tok).__name__}, len {len(tok)}, "
          f"pad/bos/eos ids {tok.pad_token_id}/{tok.bos_token_id}/{tok.eos_token_id}")
    assert len(tok) == args.vocab_size
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)

    sample = "Hello, MiniMind! 你好，世界。\n\tdef f(x): return x  # 🤖👩‍💻🇨🇳"
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample, "round trip failed"
    print(f"round trip OK: {len(sample)} chars -> {len(ids)} tokens")

    messages = [
        {"role": "system", "content": "You are MiniMind, a small helpful assistant."},
        {"role": "user", "content": "1+1等于几？"},
        {"role": "assistant", "content": "1+1=2。", "reasoning_content": "简单的加法。"},
        {"role": "user", "content": "Thanks!"},
    ]
    print("chat template example:")
    print(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


if __name__ == "__main__":
    run_main(main)  # a bad corpus line: one `error: file:line: ...` line, no traceback
