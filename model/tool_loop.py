"""The one tool loop: a multi-turn tool episode, written once for agent RL, the tool-call eval and the web demo.

    a turn is generated -> its <tool_call> blocks are parsed -> the offered tools run -> the results are appended
    as `tool` messages -> the next turn ... until a turn without calls (the final answer), max_turns, or a limit.

What a reply MEANS (its calls, which of them are valid, what they return, which messages join the chat) is decided
in one place, `Episode.take_turn`. Two drivers feed it replies:

    run_episodes(model, tokenizer, conversations, tools, ...)   our model: every episode in ONE running batch on
        model/generation.py's BatchDecoder. When a turn ends with calls, the tool results and the next assistant
        header are appended to that row's LIVE KV cache (BatchDecoder.advance(..., suffixes=...)): nothing is
        re-prefilled, and the row keeps decoding while the other rows never wait. Every token carries a mask
        (1 = sampled by the model, 0 = inserted: tool results, headers), which agent RL uses as its loss mask.
    run_turns(episodes, policy, max_turns)   any turn generator, a turn at a time: an OpenAI-compatible endpoint
        (scripts/eval_toolcall.py), a streaming UI (scripts/web_demo.py).
    run_episodes_by_turns(tokenizer, episodes, generate, ...)   token ids from an inference server (SGLang's
        native /generate; agent RL with --rollout_engine http): each turn sends every open episode's whole context.
    Both token-level drivers end a turn with `end_turn`, so their tokens and masks are built the same way.

Counting calls. A call ATTEMPT is a <tool_call> block (or an endpoint's tool_call). It is VALID when it parses as
{"name", "arguments": {object}}; a valid call to a tool the episode did not offer, or with arguments the tool
refuses, still RUNS and fails (its error text goes back to the model); `ok` is whether it succeeded.
"""
import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from model.chat_template import split_thinking, thinking_kwargs
from model.generation import BatchDecoder, Sampling
from model.tools import parse_tool_calls, run_tool


class ChatTemplateToolError(ValueError):
    """A chat template that does not render tool results after an assistant turn the way the loop needs."""


@dataclass
class Turn:
    """One model reply: its visible text, its valid calls ({"name", "arguments" (JSON text of an object)}), the
    call attempts that were not valid calls, the reasoning (<think>), and what running the calls gave."""
    content: str
    calls: List[dict] = field(default_factory=list)
    invalid: int = 0
    reasoning: str = ""
    results: List[dict] = field(default_factory=list)  # [{"name", "arguments", "result", "ok"}]
    error: Optional[str] = None  # the generator could not produce this turn (e.g. an endpoint refused it)
    text: str = ""               # the raw reply (rewards check its tags)
    finished: bool = True        # ended properly (a stop token), not cut at its token budget


def split_valid(calls: Sequence[dict]) -> Tuple[List[dict], int]:
    """Parsed calls -> (valid calls, number invalid): a valid call's arguments are a JSON object."""
    valid, invalid = [], 0
    for c in calls:
        try:
            ok = isinstance(json.loads(c["arguments"] or "{}"), dict)
        except (ValueError, TypeError, RecursionError):
            ok = False
        if ok:
            valid.append({"name": c["name"], "arguments": c["arguments"] or "{}"})
        else:
            invalid += 1
    return valid, invalid


def turn_from_text(text: str) -> Turn:
    """A raw completion -> Turn. Calls inside the reasoning do not count (the model was thinking aloud)."""
    reasoning, answer = split_thinking(text)
    content, calls = parse_tool_calls(answer)
    valid, invalid = split_valid(calls)
    malformed = max(answer.count("<tool_call>"), answer.count("</tool_call>")) - len(calls)
    return Turn(content, valid, invalid + max(0, malformed), reasoning, text=text)


def offered_names(tools: Optional[Sequence[dict]]) -> set:
    return {(t.get("function", t) or {}).get("name") for t in tools or []}


def run_call(name: str, arguments: str, offered: set, run: Callable = run_tool) -> Tuple[str, bool]:
    """Run one valid call: a tool the episode did not offer is as unknown to the model as a made-up one."""
    if name not in offered:
        return json.dumps({"error": f"unknown tool {name[:40]!r}; available: "
                                    f"{', '.join(sorted(n for n in offered if n))}"}, ensure_ascii=False), False
    return run(name, arguments)


@dataclass(eq=False)
class Episode:
    """One episode as it unfolds. `messages` grows with each turn (assistant + tool messages), so it is always
    the chat so far; a local rollout also keeps the tokens (`prompt_ids` + `ids`, `mask`: 1 = sampled)."""
    messages: List[dict]
    tools: Optional[List[dict]] = None
    thinking: Optional[bool] = None     # the chat template's thinking switch (None: the template's default)
    prompt_ids: List[int] = field(default_factory=list)
    ids: List[int] = field(default_factory=list)
    mask: List[int] = field(default_factory=list)
    turns: List[Turn] = field(default_factory=list)
    answer: Optional[str] = None        # the final answer (a turn without calls); None while unfinished
    turn_start: int = 0                 # local rollouts: where the current turn starts in `ids`
    opens_think: bool = False           # the generation prompt ends inside <think> (upstream minimind-3, thinking on)

    @property
    def context(self) -> List[int]:
        return self.prompt_ids + self.ids

    @property
    def calls(self) -> List[Tuple[str, bool]]:
        """(name, ok) per call attempt; an invalid attempt is ("", False). A turn cut at its token budget counts
        no attempt (half a call is no call: see take_turn)."""
        return [(r["name"], r["ok"]) for t in self.turns for r in t.results] + \
               [("", False)] * sum(t.invalid for t in self.turns if t.finished)

    def take_turn(self, turn: Turn, finished: bool = True, can_continue: bool = True,
                  run: Callable = run_tool) -> bool:
        """Record a reply and act on it; returns whether the episode goes on (another turn is wanted).

        finished: the reply ended properly (a stop token; an endpoint's answer). A reply cut at its token budget
            is recorded but not acted on: half a call is no call, and the episode stays unfinished.
        can_continue: whether another turn may follow (max_turns, context room); if not, calls still run (their
            results are scored) but nobody reads them, and the episode stays unfinished.
        """
        turn.finished = finished
        self.turns.append(turn)
        if not finished or turn.error is not None:
            return False
        if not turn.calls:
            self.answer = turn.content
            return False
        offered = offered_names(self.tools)
        ids = [f"call_{len(self.turns) - 1}_{k}" for k in range(len(turn.calls))]
        self.messages.append({"role": "assistant", "content": turn.content, "tool_calls": [
            {"id": cid, "type": "function", "function": dict(c)} for cid, c in zip(ids, turn.calls)]})
        for cid, c in zip(ids, turn.calls):
            result, ok = run_call(c["name"], c["arguments"], offered, run)
            turn.results.append({**c, "result": result, "ok": ok})
            self.messages.append({"role": "tool", "tool_call_id": cid, "content": result})
        return can_continue


# ================================================================================================================
# Driver 1: any turn generator, a turn at a time
# ================================================================================================================
# A policy takes the episodes still going and returns one Turn each (it reads ep.messages, ep.tools, ep.thinking).
Policy = Callable[[List[Episode]], List[Turn]]


def run_turns(episodes: List[Episode], policy: Policy, max_turns: int, run: Callable = run_tool,
              log: Optional[Callable] = None) -> List[Episode]:
    """Play every episode to its final answer or `max_turns`; each turn is one policy call over the open ones."""
    open_ = list(episodes)
    for turn_no in range(max_turns):
        if not open_:
            break
        replies = policy(open_)
        open_ = [ep for ep, reply in zip(open_, replies)
                 if ep.take_turn(reply, finished=reply.finished, can_continue=turn_no + 1 < max_turns, run=run)]
        if log:
            log(f"turn {turn_no + 1}: {len(replies)} episodes, {len(replies) - len(open_)} finished")
    return episodes


# ================================================================================================================
# Driver 2: our model, all episodes in one running batch, tool results appended to the live KV cache
# ================================================================================================================
def render_prompt(tokenizer, messages, tools, thinking: Optional[bool]) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False, add_generation_prompt=True,
                                         **thinking_kwargs(tokenizer, enable_thinking=thinking))


def tool_turn_ids(tokenizer, ep: Episode, history_before: List[dict]) -> List[int]:
    """The tokens that follow the model's <|im_end|> after a turn with calls: the tool results as the chat template
    renders `tool` messages, then the next assistant header. Taken as the difference of two renders of the same
    chat (up to the assistant turn, and with the results), so any template renders them its own way; tokenized on
    their own, which is exact because a special token (<|im_end|>) ends what comes before."""
    kw = dict(tools=ep.tools or None, tokenize=False, **thinking_kwargs(tokenizer, enable_thinking=ep.thinking))
    # the chat up to and including the assistant turn (history_before + the turn's assistant message)
    before = tokenizer.apply_chat_template(ep.messages[:len(history_before) + 1], add_generation_prompt=False, **kw)
    after = tokenizer.apply_chat_template(ep.messages, add_generation_prompt=True, **kw)
    eos = tokenizer.eos_token
    end = before.rfind(eos) + len(eos)
    if end < len(eos) or not after.startswith(before[:end]):
        raise ChatTemplateToolError(f"the chat template does not close an assistant turn with {eos!r} and render "
                                    f"tool messages after it; tool episodes need that (check --tokenizer_path)")
    return tokenizer(after[end:], add_special_tokens=False).input_ids


def new_episodes(tokenizer, conversations: Sequence[List[dict]], tools: Sequence[Optional[list]],
                 thinking: Sequence[Optional[bool]]) -> List[Episode]:
    """Episodes with their prompts rendered and tokenized (the chat template's generation prompt included)."""
    out = []
    for m, t, th in zip(conversations, tools, thinking):
        text = render_prompt(tokenizer, m, t, th)
        out.append(Episode(messages=[dict(x) for x in m], tools=t, thinking=th, opens_think=text.rstrip().endswith(
            "<think>"), prompt_ids=tokenizer(text, add_special_tokens=False).input_ids))
    return out


def end_turn(tokenizer, ep: Episode, stop: bool, *, max_turns: int, max_new_tokens: int, max_total_len: int,
             run: Callable = run_tool, parse: Callable[[str], Turn] = turn_from_text) -> Optional[Tuple[List[int],
                                                                                                          int]]:
    """A token-level turn has ended (its tokens are in `ep.ids` from `ep.turn_start`; `stop`: it ended with a stop
    token, else at its budget): parse it, act on it (Episode.take_turn), and if the episode goes on append the tool
    results and the next assistant header to `ep.ids` (mask 0) -> (those inserted ids, the next turn's token
    budget); None when the episode is over (an answer, max_turns, or no room left in max_total_len)."""
    sampled = ep.ids[ep.turn_start:]
    text = tokenizer.decode(sampled[:-1] if stop else sampled, skip_special_tokens=False)
    history = list(ep.messages)
    goes_on = ep.take_turn(parse(("<think>" if ep.opens_think else "") + text), finished=stop,
                           can_continue=len(ep.turns) + 1 < max_turns, run=run)
    if not goes_on:
        return None
    inserted = tool_turn_ids(tokenizer, ep, history)
    budget = min(max_new_tokens, max_total_len - len(ep.context) - len(inserted))
    if budget <= 0:  # no room for another turn: unfinished
        return None
    ep.ids += inserted
    ep.mask += [0] * len(inserted)
    ep.turn_start = len(ep.ids)
    return inserted, budget


@torch.inference_mode()
def run_episodes(model, tokenizer, episodes: List[Episode], *, max_turns: int, max_new_tokens: int,
                 max_total_len: int, sampling: Sampling = Sampling(0.0), run: Callable = run_tool,
                 autocast=None, parse: Callable[[str], Turn] = turn_from_text) -> List[Episode]:
    """Play `episodes` (from `new_episodes`) with our model, all in one running batch (see the module docstring).

    A turn gets at most `max_new_tokens` tokens, an episode at most `max_total_len` tokens of context. The random
    stream is `sampling.generator`'s alone, so a rollout depends only on the weights, the prompts and the
    generator: a resumed RL run replays it exactly. When a template opens <think> in the generation prompt
    (upstream minimind-3 with thinking on), a reply is read as reasoning until its </think>. `parse` turns a
    reply's text into a Turn (scripts/benchmark.py scripts it to time multi-turn rollouts with random weights).
    """
    eos = tokenizer.eos_token_id
    dec = BatchDecoder(model, eos, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def room(e):
        return min(max_new_tokens, max_total_len - len(e.context))

    # One prefill per prompt length: rows of equal length need no padding (the G copies of an RL prompt share
    # one); the decoder merges the groups into its running batch.
    by_len = {}
    for e in episodes:
        e.turn_start = len(e.ids)
        if room(e) > 0:  # else (a prompt longer than the budget): unfinished at once
            by_len.setdefault(len(e.context), []).append(e)
    with autocast if autocast is not None else nullcontext():
        for group in by_len.values():
            dec.admit([e.context for e in group], sampling, [room(e) for e in group], tags=group)
        while len(dec):
            tok, _ = dec.sample()
            toks, stops = torch.stack([tok, dec.is_stop(tok).long()]).tolist()  # the one host sync per step
            keep, suffixes, budgets = [], [], []
            for i, (row, t, stop) in enumerate(zip(dec.rows, toks, stops)):
                ep = row.tag
                ep.ids.append(t)
                ep.mask.append(1)
                if not stop and row.generated < row.max_new_tokens:
                    keep.append(i)
                    suffixes.append(None)
                    budgets.append(0)
                    continue
                nxt = end_turn(tokenizer, ep, bool(stop), max_turns=max_turns, max_new_tokens=max_new_tokens,
                               max_total_len=max_total_len, run=run, parse=parse)
                if nxt is None:
                    continue
                keep.append(i)
                suffixes.append(nxt[0])
                budgets.append(nxt[1])
            if len(keep) < len(dec.rows):
                dec.keep(keep)
                tok = tok[torch.tensor(keep, dtype=torch.long, device=tok.device)]
            if len(dec):
                # Rows that go on with tool results get them written into their KV cache after their sampled
                # <|im_end|>; the others just advance by their sampled token.
                dec.advance(tok, suffixes, budgets)
    return episodes



# ================================================================================================================
# Driver 3: a token-level generator that takes whole contexts (an inference server's /generate)
# ================================================================================================================
# generate(contexts, budgets) -> one (sampled token ids, the stop token included if any; ended by a stop token)
# per context. An RL trainer with --rollout_engine http passes SGLang's native /generate (trainer/rl_utils.py).
ContextGenerator = Callable[[List[List[int]], List[int]], List[Tuple[List[int], bool]]]


def run_episodes_by_turns(tokenizer, episodes: List[Episode], generate: ContextGenerator, *, max_turns: int,
                          max_new_tokens: int, max_total_len: int, run: Callable = run_tool,
                          parse: Callable[[str], Turn] = turn_from_text) -> List[Episode]:
    """Play `episodes` (from `new_episodes`) a turn at a time: every open episode's WHOLE context (prompt, turns so
    far, tool results) is sent again for each turn, as an SGLang client does (its radix cache finds the shared
    prefix, so the server does not prefill it again). Tokens, masks and turns come out exactly as `run_episodes`
    makes them (the same `end_turn`), so agent RL trains on either."""
    open_ = []
    for e in episodes:
        e.turn_start = len(e.ids)
        budget = min(max_new_tokens, max_total_len - len(e.context))
        if budget > 0:  # else (a prompt longer than the budget): unfinished at once
            open_.append((e, budget))
    while open_:
        outputs = generate([e.context for e, _ in open_], [b for _, b in open_])
        going = []
        for (ep, budget), (ids, stop) in zip(open_, outputs):
            ids = list(ids)[:budget]
            ep.ids += ids
            ep.mask += [1] * len(ids)
            nxt = end_turn(tokenizer, ep, bool(stop) and bool(ids), max_turns=max_turns,
                           max_new_tokens=max_new_tokens, max_total_len=max_total_len, run=run, parse=parse)
            if nxt is not None:
                going.append((ep, nxt[1]))
        open_ = going
    return episodes
