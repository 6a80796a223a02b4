"""Agentic RL (trainer/train_agent.py) and the one tool loop it shares with the tool eval and the web demo
(model/tool_loop.py): the batched multi-turn rollout against a scripted fake policy (tool results land in the
context and are masked out of the loss), live-KV-cache rollouts against re-prefilled ones, CISPO and GRPO losses on
hand values, the reward rules on hand-built episodes (a task that needs a tool never pays for skipping it), and the
script end to end (resume equality, dynamic sampling, 2-process gloo)."""
import argparse
import json
import math
import re
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import (SAMPLE, StopOn, run_trainer, spread_weights_, straight_and_resumed,  # noqa: E402
                     tiny_model, train_log, write_jsonl)
from model import tool_loop  # noqa: E402
from model.generation import stream_generate  # noqa: E402
from model.model_minimind import MiniMindConfig  # noqa: E402
from model.tool_loop import (Episode, Turn, new_episodes, render_prompt, run_episodes, run_turns,  # noqa: E402
                             tool_turn_ids, turn_from_text)
from model.tools import tool_schemas  # noqa: E402
from trainer import rl_utils, train_agent  # noqa: E402
from trainer.rl_utils import (AGENT_RULES, CISPO_EPS_HIGH, RewardFunction, add_clip_args,  # noqa: E402
                              agent_answer_reward, aggregate_loss, calls_reward, cispo_policy_loss,
                              closure_reward, clipped_policy_loss, kl_k3, needed_calls, parse_reward_spec,
                              policy_loss, repetition_reward, token_logps, tool_reward)
from trainer.train_agent import AGENT_REWARDS, pack, rollout, score  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

THINK = "<think>\n\n</think>\n\n"  # what the template pre-fills after the assistant header with thinking off
CALC = tool_schemas(["calculate_math"])


# ================================================================================================ a fake policy
class ToolScriptPolicy(torch.nn.Module):
    """A stand-in for a trained agent, decoded by the REAL engine (BatchDecoder, KV cache, admit/keep/advance,
    tool results appended to a row's live cache).

    It keeps each row's token ids in its KV cache (channel 0 of layer 0's keys holds id + 1; 0 = padding), so the
    engine's cache merges, evictions and appended turns carry them along like real keys. At every step it reads
    the row's history from the keys its attention mask lets it see (as a real model would), asks
    `script(context_text) -> reply` what this turn should say, and puts all the probability on the next token of
    that reply (then EOS). The reply may depend on anything in the context, e.g. a tool result: so the replies
    show what actually reached the model."""

    def __init__(self, tokenizer, script):
        super().__init__()
        self.config = MiniMindConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the engine a device and dtype
        self.tok, self.script = tokenizer, script
        self.header = len(tokenizer("assistant\n" + THINK, add_special_tokens=False).input_ids)
        self.forwards = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, **kwargs):
        self.forwards += 1
        b, t = input_ids.shape
        c = self.config
        real = torch.ones(b, t) if attention_mask is None else attention_mask[:, -t:].float()
        k = torch.zeros(b, c.num_key_value_heads, t, c.head_dim)
        k[:, 0, :, 0] = (input_ids.float() + 1) * real
        keys, _ = cache.update(k, k, 0)
        visible = torch.ones(b, keys.shape[2], dtype=torch.bool) if attention_mask is None else \
            attention_mask.bool()
        assert visible.shape[1] == keys.shape[2], "the attention mask must cover every cached column"
        logits = torch.full((b, 1, c.vocab_size), -100.0)
        for i in range(b):
            hist = [int(x) - 1 for x, v in zip(keys[i, 0, :, 0].tolist(), visible[i].tolist()) if v and x > 0]
            start = len(hist) - 1 - hist[::-1].index(self.tok.bos_token_id)  # this turn's <|im_start|>
            context = self.tok.decode(hist[:start], skip_special_tokens=False)
            target = self.tok(self.script(context), add_special_tokens=False).input_ids + [self.tok.eos_token_id]
            done = len(hist) - (start + 1 + self.header)  # tokens of this turn sampled so far
            logits[i, 0, target[min(done, len(target) - 1)]] = 100.0
        return SimpleNamespace(logits=logits)


def call(name, **arguments):
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def agent_script(context):
    """calc: call the calculator, then answer with what it returned; unknown: call a tool nobody offered, then
    give up; direct: answer at once; loop: call the calculator forever."""
    task = re.findall(r"<\|im_start\|>user\n(\w+):", context)[0]
    results = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", context, re.S)
    if task == "direct":
        return "It is 42."
    if task == "loop" or not results:
        return call("web_search", q="x") if task == "unknown" else call("calculate_math", expression="834-38*42")
    if task == "unknown":
        return "I cannot find out."
    return f"The answer is {json.loads(results[-1])['result']}."


TASKS = {"calc": "-762", "unknown": "7", "direct": "42", "loop": "1"}


def task_prompts():
    messages = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{t}: what is it?"}]
                for t in TASKS]
    return messages, [CALC] * len(TASKS), [[gt] for gt in TASKS.values()]


def play(tokenizer, messages, tools, max_turns=3, max_gen_len=64, max_total_len=2048):
    """The scripted agent through tool_loop.run_episodes (thinking off: the template pre-fills THINK)."""
    policy = ToolScriptPolicy(tokenizer, agent_script)
    episodes = new_episodes(tokenizer, messages, tools, [False] * len(messages))
    return run_episodes(policy, tokenizer, episodes, max_turns=max_turns, max_new_tokens=max_gen_len,
                        max_total_len=max_total_len), policy


def spans(tokenizer, ep, value):
    """The decoded runs of the completion whose mask is `value`."""
    out, run = [], []
    for t, m in zip(ep.ids + [None], ep.mask + [None]):
        if m == value:
            run.append(t)
        elif run:
            out.append(tokenizer.decode(run, skip_special_tokens=False))
            run = []
    return out


# ================================================================================================ rollout
def test_batched_rollout_runs_tools_and_masks_their_results(tokenizer):
    messages, tools, gts = task_prompts()
    G = 2
    eps, policy = play(tokenizer, [m for m in messages for _ in range(G)], [t for t in tools for _ in range(G)])
    by_task = dict(zip(TASKS, eps[::G]))
    calc = by_task["calc"]
    # The calculator ran on the model's call; its result reached the model's context (the reply quotes it).
    assert calc.calls == [("calculate_math", True)] and calc.answer == "The answer is -762."
    assert len(calc.turns) == 2
    # Inserted tokens = the tool turn exactly as the chat template renders a `tool` message + the next header.
    assert spans(tokenizer, calc, 0) == [
        '\n<|im_start|>user\n<tool_response>\n{"result": "-762"}\n</tool_response><|im_end|>\n<|im_start|>assistant\n'
        + THINK]
    assert spans(tokenizer, calc, 1) == [call("calculate_math", expression="834-38*42") + "<|im_end|>",
                                         "The answer is -762.<|im_end|>"]
    # The whole context is what the template renders for that conversation.
    convo = messages[0] + [{"role": "assistant", "content": THINK + calc.turns[0].text},
                           {"role": "tool", "content": '{"result": "-762"}'},
                           {"role": "assistant", "content": THINK + calc.turns[1].text}]
    rendered = tokenizer.apply_chat_template(convo, tools=CALC, tokenize=False)
    assert tokenizer.decode(calc.context, skip_special_tokens=False) + "\n" == rendered
    # The episode's chat: the call as an assistant `tool_calls` message, its result as a `tool` message (same id).
    assert calc.messages[2:] == [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0_0", "type": "function", "function": {
            "name": "calculate_math", "arguments": '{"expression": "834-38*42"}'}}]},
        {"role": "tool", "tool_call_id": "call_0_0", "content": '{"result": "-762"}'}]
    # An unknown tool gets an error result the model reads; a direct answer is one turn; a loop runs out of turns.
    unknown = by_task["unknown"]
    assert unknown.calls == [("web_search", False)] and unknown.answer == "I cannot find out."
    assert "unknown tool 'web_search'" in spans(tokenizer, unknown, 0)[0]
    assert by_task["direct"].calls == [] and by_task["direct"].mask == [1] * len(by_task["direct"].ids)
    loop = by_task["loop"]
    assert loop.answer is None and len(loop.turns) == 3 and loop.calls == [("calculate_math", True)] * 3
    assert len(spans(tokenizer, loop, 0)) == 2  # no results appended after the last turn: nobody would read them
    # The G generations of a prompt are consecutive rows.
    assert all(eps[i].ids == eps[i + 1].ids for i in range(0, len(eps), G))
    # Batched: far fewer forwards than one episode at a time would take.
    total = sum(len(e.ids) for e in eps)
    assert policy.forwards < total / 2, (policy.forwards, total)


def test_batched_rollout_equals_one_at_a_time(tokenizer):
    messages, tools, _ = task_prompts()
    batched, _ = play(tokenizer, messages, tools)
    for m, t, ep in zip(messages, tools, batched):
        [single], _ = play(tokenizer, [m], [t])
        assert (single.ids, single.mask, single.turns, single.calls) == (ep.ids, ep.mask, ep.turns, ep.calls)


def test_real_model_batched_greedy_equals_one_at_a_time(tokenizer):
    model = tiny_model(0).eval()
    messages, tools, _ = task_prompts()
    messages[1] = messages[1] + [{"role": "assistant", "content": "a longer history"}, messages[1][-1]]  # padding
    kw = dict(max_turns=2, max_new_tokens=6, max_total_len=2048)
    batched = run_episodes(model, tokenizer, new_episodes(tokenizer, messages, tools, [True] * 4), **kw)
    for m, t, ep in zip(messages, tools, batched):
        [single] = run_episodes(model, tokenizer, new_episodes(tokenizer, [m], [t], [True]), **kw)
        assert single.ids == ep.ids and len(ep.ids) == 6  # a random model: cut at max_new_tokens, unfinished
        assert ep.answer is None and len(ep.turns) == 1 and not ep.turns[0].finished and ep.mask == [1] * 6
    assert model.training is False


def test_turn_cut_at_max_gen_len_and_context_limit_end_unfinished(tokenizer):
    messages, tools, _ = task_prompts()
    [ep], _ = play(tokenizer, messages[:1], tools[:1], max_gen_len=5)
    assert ep.answer is None and len(ep.ids) == 5 and ep.calls == []  # the call never closed: not run
    assert ep.turns[0].finished is False
    [full], _ = play(tokenizer, messages[:1], tools[:1])
    prompt_len, first_turn = len(full.prompt_ids), full.mask.index(0)  # the call, <|im_end|> included
    inserted = full.mask.count(0)
    # Room for the call and its result but not one token more: the call runs (its result is scored), nothing is
    # appended, and the episode is unfinished.
    [ep], _ = play(tokenizer, messages[:1], tools[:1], max_total_len=prompt_len + first_turn + inserted)
    assert ep.answer is None and ep.calls == [("calculate_math", True)] and set(ep.mask) == {1}
    # One token more: the result is appended and the second turn gets that one token.
    [ep], _ = play(tokenizer, messages[:1], tools[:1], max_total_len=prompt_len + first_turn + inserted + 1)
    assert ep.answer is None and ep.mask == [1] * first_turn + [0] * inserted + [1] and len(ep.turns) == 2
    [ep], _ = play(tokenizer, messages[:1], tools[:1], max_total_len=prompt_len)  # no room at all
    assert ep.ids == [] and ep.turns == [] and ep.answer is None


def rollout_args(**kw):
    return SimpleNamespace(**{**dict(max_turns=1, max_gen_len=1, max_total_len=2048, temperature=1.0, top_p=1.0),
                              **kw})


def test_thinking_switch_is_drawn_per_episode(tokenizer):
    model = tiny_model(0).eval()
    messages, tools, _ = task_prompts()
    tasks = [{"messages": m, "tools": t} for m, t in zip(messages, tools)] * 4
    G = 2
    eps = rollout(model, tokenizer, tasks, G, torch.Generator().manual_seed(0), rollout_args(), 0.5, None)
    assert len(eps) == G * len(tasks)
    assert all(e.messages[-1] == t["messages"][-1] for e, t in zip(eps, [t for t in tasks for _ in range(G)]))
    think_suffix = tokenizer("assistant\n" + THINK, add_special_tokens=False).input_ids
    prefilled = [e.prompt_ids[-len(think_suffix):] == think_suffix for e in eps]
    assert [not e.thinking for e in eps] == prefilled and 0 < sum(prefilled) < len(eps)
    again = rollout(model, tokenizer, tasks, G, torch.Generator().manual_seed(0), rollout_args(), 0.5, None)
    assert [e.thinking for e in again] == [e.thinking for e in eps]  # from the step's generator: replayable
    assert [e.ids for e in again] == [e.ids for e in eps]


def test_default_thinking_ratio_follows_the_template(request, tokenizer):
    """Our template: every episode rendered as at inference (the plain header; no pre-filled empty <think>
    block, which our SFT data never shows). Upstream minimind-3's template (open_thinking): upstream's 0.1 for
    the agent stage (rl_utils.thinking_ratio, shared with GRPO/PPO/SPO, whose upstream value is 0.9)."""
    from argparse import Namespace
    from trainer.rl_utils import thinking_ratio
    unset = Namespace(thinking_ratio=None, minimind3_thinking_ratio=0.1)

    def default_thinking_ratio(tok):
        return thinking_ratio(unset, tok)
    assert default_thinking_ratio(tokenizer) == 1.0
    assert thinking_ratio(Namespace(thinking_ratio=0.3, minimind3_thinking_ratio=0.1), tokenizer) == 0.3
    plain = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                          add_generation_prompt=True)
    [ep] = rollout(tiny_model(0).eval(), tokenizer, [{"messages": [{"role": "user", "content": "hi"}], "tools": None}],
                   1, torch.Generator().manual_seed(0), rollout_args(max_total_len=256),
                   default_thinking_ratio(tokenizer), None)
    assert tokenizer.decode(ep.prompt_ids) == plain and not plain.endswith(THINK)
    assert default_thinking_ratio(request.getfixturevalue("mm3")) == 0.1  # skips without ../shared (conftest.py)


def test_tool_tokens_are_masked_out_of_loss_and_kl(tokenizer):
    messages, tools, _ = task_prompts()
    eps, _ = play(tokenizer, messages, tools)
    seq, attn, pos, mask = pack(eps, tokenizer.pad_token_id, "cpu")
    P = seq.shape[1] - mask.shape[1]
    for i, e in enumerate(eps):
        assert seq[i, P - len(e.prompt_ids):P + len(e.ids)].tolist() == e.context
        assert mask[i, :len(e.mask)].tolist() == e.mask and mask[i, len(e.mask):].sum() == 0
        assert attn[i].sum() == len(e.context)  # tool results are attended to (context) ...
    assert (mask == 0).logical_and(attn[:, P:] == 1).any()  # ... but not trained on
    model = tiny_model(0)
    logps = token_logps(model, seq, attn, pos, mask.shape[1]).detach().requires_grad_(True)
    ref = logps.detach() + 0.1
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    for loss_type in ("grpo", "cispo"):
        pg, _ = policy_loss(loss_type, logps, logps.detach(), adv)
        loss = aggregate_loss(pg + 0.1 * kl_k3(logps, ref), mask, loss_type)
        (grad,) = torch.autograd.grad(loss, logps)
        assert torch.all(grad[mask == 0] == 0) and torch.all(grad[mask == 1] != 0), loss_type


# ================================================================================================ losses
def test_cispo_loss_on_hand_values():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[0.5, 2.0, 8.0, 1.0]])) + old  # ratios 0.5, 2, 8, 1 (old = 0)
    adv = torch.tensor([2.0])
    loss, capped = cispo_policy_loss(logp, old, adv, clip_eps_high=4.0)  # weight cap 5
    w = torch.tensor([0.5, 2.0, 5.0, 1.0])
    assert torch.allclose(loss[0], -w * 2.0 * logp[0], atol=1e-6)
    assert capped[0].tolist() == [False, False, True, False]
    # Every token keeps its gradient (PPO's clip would zero tokens 1 and 2): d/dlogp = -w * A.
    lp = logp.clone().requires_grad_(True)
    cispo_policy_loss(lp, old, adv, 4.0)[0].sum().backward()
    assert torch.allclose(lp.grad[0], -w * 2.0, atol=1e-6)
    lp2 = logp.clone().requires_grad_(True)
    clipped_policy_loss(lp2, old, adv, 0.2)[0].sum().backward()
    assert lp2.grad[0, 1] == 0 and lp2.grad[0, 2] == 0  # GRPO/PPO: clipped tokens lose their gradient
    # At ratio 1 (one update per rollout) CISPO's gradient is GRPO's; the values differ (-A log pi vs -A).
    lp3 = torch.log(torch.tensor([[0.25, 0.5]])).requires_grad_(True)
    lp4 = lp3.detach().clone().requires_grad_(True)
    adv2 = torch.tensor([-1.5])
    c, _ = cispo_policy_loss(lp3, lp3.detach(), adv2)
    g, _ = clipped_policy_loss(lp4, lp4.detach(), adv2)
    assert torch.allclose(c, 1.5 * lp3.detach()) and torch.allclose(g, torch.full((1, 2), 1.5))
    c.sum().backward()
    g.sum().backward()
    assert torch.allclose(lp3.grad, lp4.grad)
    # Defaults: CISPO caps at 1 + CISPO_EPS_HIGH unless told otherwise; "cispo" aggregates per token (as dapo).
    _, capped = policy_loss("cispo", torch.log(torch.tensor([[4.9, 5.1]])), torch.zeros(1, 2), torch.ones(1))
    assert CISPO_EPS_HIGH == 4.0 and capped.tolist() == [[False, True]]
    tl, m = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]]), torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert math.isclose(float(aggregate_loss(tl, m, "cispo")), 8.0 / 5, rel_tol=1e-6)
    assert math.isclose(float(aggregate_loss(tl, m, "grpo")), 2.5, rel_tol=1e-6)


def test_grpo_policy_loss_on_hand_values():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    loss, clipped = policy_loss("grpo", logp, old, torch.tensor([1.0]), clip_eps=0.2)
    assert torch.allclose(loss[0], torch.tensor([-1.2, -0.5, -1.0]), atol=1e-6)  # min(r A, clip(r) A), negated
    assert clipped[0].tolist() == [True, False, False]


def test_clip_flags_and_upstream_spellings():
    import argparse
    parser = add_clip_args(argparse.ArgumentParser())
    args = parser.parse_args([])
    assert (args.clip_epsilon, args.clip_epsilon_high) == (0.2, None)
    args = parser.parse_args(["--epsilon", "0.1", "--epsilon_high", "5.0"])  # upstream: the cap itself
    assert (args.clip_epsilon, args.clip_epsilon_high) == (0.1, 4.0)
    assert parser.parse_args(["--clip_epsilon_high", "0.28"]).clip_epsilon_high == 0.28
    with pytest.raises(SystemExit):
        parser.parse_args(["--epsilon_high", "0.5"])


# ================================================================================================ rewards
def episode(*replies, tools=CALC, finished=True, tokenizer=None):
    """An episode played by hand: each reply goes through Episode.take_turn, as in a rollout (its calls run for
    real), until one ends the episode; the last one is cut at its token budget unless `finished`. With a
    tokenizer, ids/mask hold the replies' tokens (mask 1) and the tool turns between them (mask 0), as a rollout
    leaves them."""
    ep = Episode(messages=[{"role": "user", "content": "What is 834-38*42?"}], tools=tools, thinking=None)
    for i, reply in enumerate(replies):
        last = i == len(replies) - 1
        if tokenizer is not None:
            sampled = tokenizer(reply, add_special_tokens=False).input_ids
            sampled += [tokenizer.eos_token_id] if finished or not last else []
            ep.ids += sampled
            ep.mask += [1] * len(sampled)
        history = list(ep.messages)
        if not ep.take_turn(turn_from_text(reply), finished=finished or not last):
            break  # an answer (a reply without valid calls), or cut: the episode is over
        if tokenizer is not None:
            inserted = tool_turn_ids(tokenizer, ep, history)
            ep.ids += inserted
            ep.mask += [0] * len(inserted)
    return ep


RIGHT, WRONG = "The answer is -762.", "The answer is -760."
CALL = call("calculate_math", expression="834-38*42")


def test_agent_reward_rules_on_hand_built_episodes():
    # answer: the fraction of gt in the final answer, only once the episode finished; for a task that needs a
    # tool, only after a successful call
    gt = ["-762"]
    assert agent_answer_reward(episode(CALL, RIGHT), gt) == 1.0
    assert agent_answer_reward(episode(CALL, WRONG), gt) == 0.0
    assert agent_answer_reward(episode(CALL, "-762 and 228"), ["-762", "1962.5"]) == 0.5
    assert agent_answer_reward(episode(CALL, RIGHT, finished=False), gt) == 0.0      # cut: no answer
    assert agent_answer_reward(episode(RIGHT), gt) == 0.0                             # guessed, no call
    assert agent_answer_reward(episode(call("calculate_math", expr="1"), RIGHT), gt) == 0.0  # only a failed call
    assert agent_answer_reward(episode(call("web_search", q="x"), RIGHT), gt) == 0.0  # a tool nobody offered
    assert agent_answer_reward(episode(RIGHT), gt, n_calls=0) == 1.0                  # the task needs no tool
    assert agent_answer_reward(episode(RIGHT, tools=None), gt) == 1.0                 # no tools offered
    # how many calls a task needs: its "n_calls", else 1 when tools are offered
    assert (needed_calls(episode(RIGHT), None), needed_calls(episode(RIGHT, tools=None), None),
            needed_calls(episode(RIGHT), 2)) == (1, 0, 2)
    # tool: (successful - failed) / attempts; a malformed block is a failed attempt
    assert [tool_reward(episode(*r).calls) for r in ((RIGHT,), (CALL, RIGHT), (CALL + call("web_search"), RIGHT),
                                                      ("<tool_call>{oops</tool_call>", RIGHT))] == [0, 1, 0, -1]
    # calls: -|calls - needed| / needed, clipped at -1; a task that needs none pays -1 for any call
    assert [calls_reward(n, k) for n, k in ((0, 1), (1, 1), (2, 1), (3, 2), (5, 2), (0, 0), (1, 0))] == [
        -1, 0, -1, -0.5, -1, 0, -1]
    # format: an unclosed (or never opened) <tool_call> / <think> in a finished turn
    assert closure_reward(episode(CALL, RIGHT).turns) == 0
    assert closure_reward(episode("<tool_call>\n{}", RIGHT).turns) == -1
    assert closure_reward(episode("x</think>" + RIGHT).turns) == -1
    assert closure_reward(episode("<think>hm</think>" + RIGHT).turns) == 0
    assert closure_reward(episode(CALL, "<think>still thinking", finished=False).turns) == 0  # cut: `unfinished`
    # repetition: -(share of repeated 4-grams) of the visible text; calls are left out (their JSON repeats)
    turn = lambda content, calls=(): Turn(content, list(calls))  # noqa: E731
    assert repetition_reward([turn("abcdefg")]) == 0 and repetition_reward([turn("ab")]) == 0
    assert repetition_reward([turn("7777777")]) == pytest.approx(-(1 - 2 / 5))  # 5 grams of '\n7777777', 2 kinds
    one_call = {"name": "calculate_math", "arguments": '{"expression": "1+1"}'}
    assert repetition_reward([turn("", [one_call] * 3), turn("the answer is 2")]) == \
        repetition_reward([turn("the answer is 2")])


def test_reward_function_combines_the_agent_terms():
    episodes = [episode(CALL, RIGHT), episode(RIGHT), episode(CALL, CALL, CALL, finished=False),
                episode("<tool_call>{oops", WRONG)]
    tasks = [{"messages": [{"role": "user", "content": "q"}], "gt": ["-762"], "n_calls": None}]
    terms = parse_reward_spec("answer:1,tool:0.2,calls:0.5,format:0.2,unfinished:0.5", AGENT_REWARDS)
    rewards, parts, spread = score(RewardFunction(terms, rules=AGENT_RULES), episodes, tasks, G=4)
    assert parts["answer"].tolist() == [1, 0, 0, 0] and parts["tool"].tolist() == [1, 0, 1, -1]
    assert parts["calls"].tolist() == [0, -1, -1, 0] and parts["format"].tolist() == [0, 0, 0, -1]
    assert parts["unfinished"].tolist() == [0, 0, -1, 0]
    assert torch.allclose(rewards, torch.tensor([1.2, -0.5, -0.8, -0.4]))
    assert spread.shape == (1,) and math.isclose(float(spread[0]), float(rewards.std(correction=0)), rel_tol=1e-6)
    # the weighted sum is clipped to +-total_clip
    clipped, _, _ = score(RewardFunction(terms, rules=AGENT_RULES, total_clip=0.6), episodes, tasks, G=4)
    assert torch.allclose(clipped, torch.tensor([0.6, -0.5, -0.6, -0.4]))
    # the reward model reads the prompt and the final answer; an unfinished episode's answer is ""
    class FakeRM:
        def __call__(self, convs):
            assert all(c[:-1] == tasks[0]["messages"] and c[-1]["role"] == "assistant" for c in convs)
            return torch.tensor([float(len(c[-1]["content"])) for c in convs])
    _, parts, _ = score(RewardFunction([("model", 1.0)], FakeRM(), reward_clip=3.0, rules=AGENT_RULES),
                        episodes[1:3], tasks, G=2)
    assert parts["model"].tolist() == [3.0, 0.0]
    with pytest.raises(ValueError, match="unknown term 'gsm8k'"):
        parse_reward_spec("gsm8k", AGENT_REWARDS)


def script_defaults(main) -> argparse.Namespace:
    """The flag defaults of a script's main(): its parser, stopped where it would read the command line."""
    class Parsed(Exception):
        pass

    def stop(parser, *args, **kwargs):
        raise Parsed(parser.parse_known_args([])[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", stop)
        with pytest.raises(Parsed) as e:
            main()
    return e.value.args[0]


@pytest.mark.parametrize("weighting", ["defaults", *AGENT_REWARDS])
def test_skipping_a_needed_tool_never_pays(tokenizer, weighting):
    """The loophole, closed: for a task that needs a tool, an episode without a call never scores above an
    otherwise equal episode with a valid call and a WRONG answer, under train_agent.py's default --reward and
    under every term weighted alone. The call-less episode guesses right or wrong; the reward model term (which
    reads only the final reply, and may well prefer a right one) is compared on equal final replies."""
    defaults = script_defaults(train_agent.main)
    if weighting == "defaults":
        terms = parse_reward_spec(defaults.reward, AGENT_REWARDS)
        assert {n for n, _ in terms} >= {"answer", "calls"}  # the defaults weigh the answer and the calls
    else:
        terms = [(weighting, 1.0)]

    class FakeRM:  # likes right answers, and long ones
        def __call__(self, convs):
            return torch.tensor([len(c[-1]["content"]) / 10 + 2.0 * ("-762" in c[-1]["content"]) for c in convs])
    fn = RewardFunction(terms, FakeRM(), reward_clip=3.0, rules=AGENT_RULES, total_clip=defaults.reward_total_clip)
    with_call = episode(CALL, WRONG, tokenizer=tokenizer)
    assert with_call.calls == [("calculate_math", True)] and with_call.answer == WRONG
    for final in ([WRONG] if weighting == "model" else [RIGHT, WRONG, "-762"]):
        no_call = episode(final, tokenizer=tokenizer)
        assert no_call.calls == [] and no_call.answer == final
        for n_calls in (None, 1):  # the task says it needs one call, or it offers tools and says nothing
            task = {"messages": [{"role": "user", "content": "What is 834-38*42?"}], "gt": ["-762"],
                    "n_calls": n_calls}
            (r_none, r_call), parts, _ = score(fn, [no_call, with_call], [task], G=2)
            assert r_none <= r_call, (final, n_calls, {k: v.tolist() for k, v in parts.items()})
            if weighting == "defaults":
                assert r_none < r_call  # strictly: skipping the tool costs under the defaults


def test_no_answer_credit_without_a_successful_call():
    task = {"messages": [{"role": "user", "content": "What is 834-38*42?"}], "gt": ["-762"], "n_calls": None}
    fn = RewardFunction([("answer", 1.0)], rules=AGENT_RULES)
    episodes = [episode(RIGHT), episode(call("calculate_math", expr="1"), RIGHT),
                episode(call("web_search", q="834-38*42"), RIGHT), episode(CALL, RIGHT)]
    _, parts, _ = score(fn, episodes, [task], G=4)
    assert parts["answer"].tolist() == [0.0, 0.0, 0.0, 1.0]  # a guess, a failed call, an unoffered tool; a call


# ================================================================================================ one tool loop
def test_training_eval_and_demo_share_the_one_tool_loop(tokenizer, monkeypatch):
    """train_agent.py (through trainer/rl_utils.py's rollout engine), scripts/eval_toolcall.py and
    scripts/web_demo.py play their episodes through model/tool_loop.py: the same drivers (run_episodes for our
    model, run_turns for a turn at a time), and every reply is acted on by the same Episode.take_turn."""
    import importlib
    ev = importlib.import_module("scripts.eval_toolcall")
    wd = importlib.import_module("scripts.web_demo")
    assert rl_utils.run_episodes is tool_loop.run_episodes and train_agent.new_episodes is tool_loop.new_episodes
    assert ev.run_turns is tool_loop.run_turns and ev.run_episodes is tool_loop.run_episodes
    assert ev.Episode is wd.Episode is tool_loop.Episode and wd.run_turns is tool_loop.run_turns

    taken, driven = [], []
    take_turn = tool_loop.Episode.take_turn

    def counting_take_turn(self, turn, *args, **kwargs):
        taken.append(turn.text)
        return take_turn(self, turn, *args, **kwargs)
    monkeypatch.setattr(tool_loop.Episode, "take_turn", counting_take_turn)

    def counted(module, name):
        fn = getattr(module, name)

        def wrapper(*args, **kwargs):
            driven.append(f"{module.__name__}.{name}")
            return fn(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    # agent RL: the rollout (thinking off, as the scripted policy expects)
    counted(rl_utils, "run_episodes")  # the local engine (--rollout_engine local, the default)
    messages, tools, _ = task_prompts()
    eps = rollout(ToolScriptPolicy(tokenizer, agent_script), tokenizer, [{"messages": messages[0], "tools": CALC}],
                  1, torch.Generator().manual_seed(0), rollout_args(max_turns=3, max_gen_len=64), 0.0, None)
    assert eps[0].answer == "The answer is -762."
    assert driven == ["trainer.rl_utils.run_episodes"] and taken == [eps[0].turns[0].text, eps[0].answer]

    # the tool eval: our model (LocalPolicy.play) and an endpoint-like policy
    taken.clear()
    driven.clear()
    counted(ev, "run_episodes")
    counted(ev, "run_turns")
    task = ev.parse_task({"question": "calc: what is 834-38*42?", "tools": ["calculate_math"],
                          "calls": [{"name": "calculate_math", "arguments": {"expression": "834-38*42"}}],
                          "answer": ["-762"]}, "t:1")
    local = ev.LocalPolicy(ToolScriptPolicy(tokenizer, agent_script), tokenizer, max_new_tokens=64, thinking=False)
    result = ev.evaluate([task], local, max_turns=3, log=lambda *a: None)
    assert result["tasks"][0]["scores"]["answer_ok"] and result["tasks"][0]["scores"]["args_exact"]
    assert driven == ["scripts.eval_toolcall.run_episodes"] and len(taken) == 2

    def endpoint(episodes):
        return [turn_from_text(agent_script(render_prompt(tokenizer, e.messages, e.tools, e.thinking)))
                for e in episodes]
    endpoint.thinking = False
    taken.clear()
    driven.clear()
    assert ev.evaluate([task], endpoint, max_turns=3, log=lambda *a: None)["metrics"]["answer_acc"] == 1.0
    assert driven == ["scripts.eval_toolcall.run_turns"] and len(taken) == 2

    # the web demo's tool loop, with a fake stream of two rounds: a call, then the answer
    taken.clear()
    rounds, sent = iter([[("tool_call", {"name": "calculate_math", "arguments": {"expression": "6*7"}})],
                         [("text", "It is 42.")]]), []

    def stream_round(messages, schemas):
        sent.append([dict(m) for m in messages])
        return iter(next(rounds))
    reply = {"thinking": "", "content": "", "steps": []}
    wd.answer_with_tools(stream_round, [{"role": "user", "content": "6*7?"}], ["calculate_math"], False, reply)
    assert len(taken) == 2 and reply["content"] == "It is 42."
    assert [c["result"] for c in reply["steps"][0]["calls"]] == ['{"result": "42"}']
    assert sent[1][-1] == {"role": "tool", "tool_call_id": "call_0_0", "content": '{"result": "42"}'}


def test_run_turns_and_run_episodes_give_the_same_turns(tokenizer):
    """The same scripted replies, once decoded by our engine in one running batch (tool results appended to the
    live KV cache) and once handed over a turn at a time by a policy that reads the rendered chat: the same Turn
    records (text, calls, results, finished), the same chats and answers."""
    messages, tools, _ = task_prompts()
    live, _ = play(tokenizer, messages, tools)

    def scripted(episodes):
        return [turn_from_text(agent_script(render_prompt(tokenizer, e.messages, e.tools, e.thinking)))
                for e in episodes]
    turned = run_turns([Episode(messages=list(m), tools=t, thinking=False) for m, t in zip(messages, tools)],
                       scripted, max_turns=3)
    for a, b in zip(live, turned):
        assert [asdict(t) for t in a.turns] == [asdict(t) for t in b.turns]
        assert (a.messages, a.answer, a.calls) == (b.messages, b.answer, b.calls)
    assert [len(e.turns) for e in turned] == [2, 2, 1, 3]  # calc, unknown, direct, loop (cut at max_turns)
    # A reply the policy marks as cut (an endpoint's finish_reason "length") is recorded, not acted on.
    [cut] = run_turns([Episode(messages=list(messages[0]), tools=CALC)], lambda eps: [Turn(
        "", [{"name": "calculate_math", "arguments": "{}"}], text=CALL, finished=False)], max_turns=3)
    assert cut.answer is None and len(cut.turns) == 1 and cut.turns[0].results == [] and cut.calls == []


# ================================================================================================ live KV cache
def test_live_cache_rollout_equals_re_prefilled_rollout(tokenizer):
    """run_episodes appends each tool result to its row's live KV cache while the other rows go on decoding. A
    reference loop plays each episode alone and, every turn, prefills its whole context again (model/generation
    stream_generate, greedy), then appends the same tool turn. Token for token the same ids and masks: the
    appended cache holds exactly what a fresh prefill computes."""
    model = spread_weights_(tiny_model(0), 0.3)  # O(1) logits: varied greedy tokens
    stops = list(range(3, tokenizer.vocab_size, 8))
    tok = StopOn(tokenizer, stops)
    users = ["What is 834-38*42?", "hi", "北京天气怎么样？今天会下雨吗？",
             "Convert 3 km to miles, please.", "Tell me a story about a cat.",
             "What is 834-38*42?"]  # two rows of the same length: one prefill
    messages = [[{"role": "user", "content": u}] for u in users]
    tools = [CALC, CALC, None, CALC, tool_schemas(["calculate_math", "unit_converter"]), CALC]
    thinking = [True, False, True, True, False, True]

    def parse(text):  # every finished reply is one call, so that every turn goes on
        return Turn(text, [{"name": "calculate_math", "arguments": '{"expression": "1+1"}'}], text=text)

    def run(name, arguments):  # the tool: always the same result
        return '{"result": "2"}', True

    kw = dict(max_turns=3, max_new_tokens=10, max_total_len=2048)
    live = run_episodes(model, tok, new_episodes(tokenizer, messages, tools, thinking), run=run, parse=parse, **kw)

    for ep, m, t, th in zip(live, messages, tools, thinking):
        [ref] = new_episodes(tokenizer, [m], [t], [th])
        for turn in range(kw["max_turns"]):
            budget = min(kw["max_new_tokens"], kw["max_total_len"] - len(ref.context))
            out = list(stream_generate(model, ref.context, max_new_tokens=budget, temperature=0.0,
                                       eos_token_id=stops))
            ref.ids += out
            ref.mask += [1] * len(out)
            stop = out[-1] in stops
            history = list(ref.messages)
            text = tokenizer.decode(out[:-1] if stop else out, skip_special_tokens=False)
            if not ref.take_turn(parse(text), finished=stop, can_continue=turn + 1 < kw["max_turns"], run=run):
                break
            inserted = tool_turn_ids(tokenizer, ref, history)
            ref.ids += inserted
            ref.mask += [0] * len(inserted)
        assert (ep.ids, ep.mask) == (ref.ids, ref.mask), users[live.index(ep)]
        assert [asdict(a) for a in ep.turns] == [asdict(b) for b in ref.turns]
    # Not a trivial case: rows went on with appended turns, ended at different steps, some cut at the budget.
    assert max(len(e.turns) for e in live) == 3 and len({len(e.ids) for e in live}) > 2
    assert any(e.turns and not e.turns[-1].finished for e in live)


# ================================================================================================ the script
# (The GSM8K -> calculator-task converter, once train_agent.py --convert_gsm8k, is scripts/make_tool_data.py
# --from_gsm8k now, and the rollout benchmark, once --benchmark_rollout, is scripts/benchmark.py: their tests
# belong with those scripts.)
FAST = ["--max_gen_len", "8", "--batch_size", "2", "--num_generations", "2", "--temperature", "1.0",
        "--learning_rate", "1e-3", "--max_turns", "2", "--thinking_ratio", "0.5"]


def coin_flip_model(tokenizer, last_token: int):
    """A MiniMind that, after `last_token` (the generation prompt's last token) or after itself, says EOS or
    `last_token` again, each with probability 1/2: no attention or MLP output (the residual stream is the current
    token's embedding), and the two tokens share one embedding row while all others are 0 (tied to lm_head: a
    logit of 0.4 * 64 = 25.6 for both, 0 for the rest). Its episodes finish or run out of tokens by chance and
    differ in length, so a random-looking policy still gets rewards with a spread (a random MiniMind never ends
    a turn, and all its episodes would score the same)."""
    model = tiny_model(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[[tokenizer.eos_token_id, last_token]] = 0.4
    return model


@pytest.fixture(scope="module")
def coin_weights(tmp_path_factory, tokenizer):
    from dataset.lm_dataset import AgentRLDataset
    last = AgentRLDataset(SAMPLE / "agent_rl.jsonl", tokenizer)[0]["prompt_ids"][-1]  # the "assistant\n" header
    assert last == tokenizer("\n", add_special_tokens=False).input_ids[-1]
    path = tmp_path_factory.mktemp("coin") / "coin_64.pth"
    torch.save(coin_flip_model(tokenizer, last).state_dict(), path)
    return path


def test_train_agent_resume_equals_uninterrupted(tmp_path, coin_weights, tiny_reward_model):
    # an episode runs out of its 2 tokens (unfinished) with probability 1/4: groups have a spread, and the flat
    # ones are replaced (dynamic sampling, on by default), so the replay covers those draws too
    common = [*FAST, "--from_weight", coin_weights, "--data_path", SAMPLE / "agent_rl.jsonl", "--max_steps", 2,
              "--max_gen_len", 2, "--reward", "answer:1,tool:0.2,calls:0.5,unfinished:0.5,repetition:1,model:1",
              "--reward_model_path", tiny_reward_model]
    straight, resumed, stopped = straight_and_resumed("train_agent.py", common, [], ["--max_steps", 1], tmp_path)
    assert stopped == {"agent_64_resume.pth": (1, 2)}
    ref, rows = train_log(straight / "out", "agent_64"), train_log(resumed / "out", "agent_64")
    assert [r["step"] for r in ref] == [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "reward_std", "reward_model", "reward_unfinished", "reward_calls", "reward_repetition",
                "tool_calls", "valid_call_rate", "accuracy", "turns", "response_len", "zero_std_frac_before",
                "zero_std_frac", "loss", "kl", "clip_frac", "grad_norm"):
        for a, b in zip(rows, ref):
            assert math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-7), (key, a[key], b[key])
    assert all(r["reward_std"] > 0 and r["zero_std_frac"] < 1 and r["grad_norm"] > 0 for r in rows), rows
    assert rows[1]["kl"] > 0  # the policy moved away from the reference after step 1
    weights = torch.load(resumed / "out" / "agent_64.pth", weights_only=True)
    assert all(w.dtype == torch.float16 for w in weights.values())


def test_dynamic_sampling_replaces_flat_groups(tmp_path, coin_weights):
    """--reward unfinished:1 with --max_gen_len 1: each episode finishes (EOS) or is cut, a coin flip, so a group
    of 2 is flat (all-equal rewards, advantage 0) half the time."""
    common = [*FAST, "--from_weight", coin_weights, "--data_path", SAMPLE / "agent_rl.jsonl", "--max_steps", 3,
              "--batch_size", 4, "--max_gen_len", 1, "--thinking_ratio", 1, "--reward", "unfinished:1"]
    runs = {}
    for rounds in (0, 2):
        run_trainer("train_agent.py", *common, "--dynamic_sampling", rounds, tmp=tmp_path / f"ds{rounds}")
        runs[rounds] = train_log(tmp_path / f"ds{rounds}" / "out", "agent_64")
    off, on = runs[0], runs[2]
    assert [r["step"] for r in off] == [r["step"] for r in on] == [1, 2, 3]
    # Off: the batch is trained as drawn. On: flat groups were replaced by other tasks' groups, never made worse.
    assert all(r["zero_std_frac"] == r["zero_std_frac_before"] for r in off)
    assert all(r["zero_std_frac"] <= r["zero_std_frac_before"] for r in on)
    assert any(r["zero_std_frac"] < r["zero_std_frac_before"] for r in on), on
    assert on[0]["zero_std_frac_before"] == off[0]["zero_std_frac_before"] > 0  # the same first rollout
    assert sum(r["zero_std_frac"] for r in on) < sum(r["zero_std_frac"] for r in off)


def test_train_agent_two_process_gloo_on_calculator_tasks(tmp_path, coin_weights, tiny_reward_model):
    tasks = [{"conversations": [{"role": "system", "content": "", "tools": CALC},
                                {"role": "user", "content": f"What is {i} + {i}?"},
                                {"role": "assistant", "content": ""}], "gt": [str(2 * i)], "n_calls": 1}
             for i in range(16)]
    data = write_jsonl(tmp_path / "calc_tasks.jsonl", tasks)
    run_trainer("train_agent.py", *FAST, "--from_weight", coin_weights, "--data_path", data, "--max_steps", 2,
                "--max_gen_len", 4, "--loss_type", "grpo", "--reward", "answer,calls:0.5,unfinished:0.5,model:1",
                "--reward_model_path", tiny_reward_model, tmp=tmp_path / "run", nproc=2)
    rows = train_log(tmp_path / "run" / "out", "agent_64")
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    assert all(r["reward_calls"] == -1 for r in rows)  # this model makes no call; each task needs one
    ck = torch.load(tmp_path / "run" / "ckpt" / "agent_64_resume.pth", weights_only=True)
    assert ck["world_size"] == 2 and ck["consumed"] == 2 * 2 * 2


@pytest.mark.parametrize("flags, message", [(["--num_generations", 1], "--num_generations must be >= 2"),
                                             (["--reward", "gsm8k"], "unknown term 'gsm8k'"),
                                             (["--max_total_len", 100], "--max_total_len must exceed"),
                                             (["--dynamic_sampling", -1], "--dynamic_sampling >= 0"),
                                             (["--loss_type", "dapo"], "invalid choice: 'dapo'"),
                                             (["--per_sample_seeds", 1], "--per_sample_seeds is for PPO/GRPO/SPO")])
def test_train_agent_flag_errors(run_in_process, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        run_in_process(ROOT / "trainer" / "train_agent.py", *flags)
    assert e.value.code == 2 and message in capsys.readouterr().err
