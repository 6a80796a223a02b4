"""Generated text -> chat events: the inverse of the chat template, for every front end that streams a reply
(scripts/serve_openai_api.py, eval_llm.py, the web demo).

    ChatStreamParser()                  streamed text in, ("content" | "reasoning" | "tool_call", value) out
    ReplyStream(tokenizer, stops, ...)  generated token ids in, those events out (decoding, stop strings, parsing:
                                        the whole text path of a streamed reply)

Generating the ids is model/generation.py's (the one decoding engine); turning them into text without half
characters and cutting at stop strings are its IncrementalDecoder and StopMatcher, used here.
"""
from typing import Optional

from model.generation import IncrementalDecoder, StopMatcher
from model.tools import parse_tool_call_json


class ChatStreamParser:
    """Splits streamed assistant text into events as it arrives:

        ("reasoning", str)   text inside <think>...</think> (the `reasoning_content` of OpenAI-style servers)
        ("content", str)     the answer (MiniMind2's <answer> tags removed)
        ("tool_call", dict)  {"name": str, "arguments": str (JSON)} from <tool_call>{json}</tool_call>

    A tag may arrive split over several pieces ("<thi" + "nk>"), so text that could be the start of a tag is held
    back until it is decided. Whitespace around the blocks is trimmed (leading whitespace of each part, trailing
    whitespace before a tag or at the end), and a tool call whose JSON does not parse is passed on verbatim as
    content. Feeding all text at once or piece by piece gives the same events' joined text.
    """

    TAGS = {"content": ("<think>", "</think>", "<tool_call>", "<answer>", "</answer>"),
            "reasoning": ("</think>",),
            "tool": ("</tool_call>",)}

    def __init__(self, in_thinking: bool = False, parse_tools: bool = True):
        self.state = "reasoning" if in_thinking else "content"
        self.parse_tools = parse_tools
        self.buf = ""        # undecided text (a possible partial tag, or a tool call being collected)
        self.pending_ws = ""  # trailing whitespace held back until we know more text follows
        self.started = False  # whether the current part emitted anything (leading whitespace is dropped)

    def _tags(self):
        tags = self.TAGS[self.state]
        return tags if self.parse_tools else tuple(t for t in tags if t != "<tool_call>")

    def _emit(self, text: str, out: list):
        """Emit text in the current part, holding back trailing whitespace and dropping leading whitespace."""
        if not self.started:
            text = text.lstrip()
        if not text:
            return
        body = text.rstrip()
        if body:
            out.append((self.state, self.pending_ws + body))
            self.started, self.pending_ws = True, ""
        self.pending_ws += text[len(body):]

    def _switch(self, state: str):
        self.state, self.pending_ws, self.started = state, "", False

    def _tool_call(self, raw: str, out: list):
        call = parse_tool_call_json(raw)  # the same rule as training rewards and the tool-call eval
        if call is None:  # not a valid call: show it as text
            out.append(("content", f"<tool_call>{raw}</tool_call>"))
        else:
            out.append(("tool_call", call))

    def feed(self, text: str) -> list:
        out = []
        self.buf += text
        while True:
            tags = self._tags()
            hits = [(self.buf.find(t), t) for t in tags if t in self.buf]
            if not hits:
                break
            i, tag = min(hits)
            before, self.buf = self.buf[:i], self.buf[i + len(tag):]
            if self.state == "tool":
                self._tool_call(before.strip(), out)
                self._switch("content")
            else:
                self._emit(before, out)
                if tag == "<think>":
                    self._switch("reasoning")
                elif tag == "</think>":
                    self._switch("content")
                elif tag == "<tool_call>":
                    self._switch("tool")
                # <answer> / </answer>: dropped, the part goes on
        if self.state == "tool":
            return out  # keep collecting the call
        # Release everything except a suffix that could still become a tag.
        keep = 0
        for t in self._tags():
            for n in range(min(len(t) - 1, len(self.buf)), keep, -1):
                if self.buf.endswith(t[:n]):
                    keep = n
                    break
        ready, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        self._emit(ready, out)
        return out

    def finish(self) -> list:
        """End of generation: release held-back text (an unfinished tool call is shown verbatim)."""
        out = []
        if self.state == "tool":
            self._switch("content")
            self._emit("<tool_call>" + self.buf, out)
        else:
            self._emit(self.buf, out)
        self.buf = ""
        return out


class ReplyStream:
    """Generated token ids -> chat events, the whole text path of a streamed reply: text without half characters
    (IncrementalDecoder), cut at an OpenAI stop string (StopMatcher), split into ("reasoning" | "content" |
    "tool_call", value) events (ChatStreamParser). `eos_token_id` is skipped (None: shown like any token).

        stream = ReplyStream(tokenizer, eos_token_id=tokenizer.eos_token_id)
        for tok in stream_tokens(...):
            events = stream.push(tok)   # stream.stopped: a stop string matched, generation should end
        events = stream.finish()
    """

    def __init__(self, tokenizer, stops=(), in_thinking: bool = False, parse_tools: bool = True,
                 eos_token_id: Optional[int] = None):
        self.decoder, self.stopper = IncrementalDecoder(tokenizer), StopMatcher(stops)
        self.parser = ChatStreamParser(in_thinking=in_thinking, parse_tools=parse_tools)
        self.eos, self.stopped = eos_token_id, False

    def push(self, token_id: int) -> list:
        if token_id == self.eos or self.stopped:
            return []
        text, self.stopped = self.stopper.feed(self.decoder.push(token_id))
        return self.parser.feed(text)

    def finish(self) -> list:
        """End of generation: what the decoder and the stop matcher held back, then the parser's rest."""
        out = []
        if not self.stopped:
            text, hit = self.stopper.feed(self.decoder.flush())
            out = self.parser.feed(text if hit else text + self.stopper.flush())
        return out + self.parser.finish()
