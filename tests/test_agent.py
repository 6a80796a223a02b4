"""Agentic RL (trainer/train_agent.py): the batched multi-turn rollout against a scripted fake policy (tool results
land in the context and are masked out of the loss), CISPO and GRPO losses on hand values, the reward rules on
fixed strings, the GSM8K task builder, and the script end to end (resume equality, 2-process gloo)."""
import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import SAMPLE, run_trainer, straight_and_resumed, tiny_model, train_log, write_jsonl  # noqa: E402
from model.model_minimind import MiniMindConfig  # noqa: E402
from model.tools import tool_schemas  # noqa: E402
from trainer.rl_utils import (CISPO_EPS_HIGH, add_clip_args, aggregate_loss, cispo_policy_loss,  # noqa: E402
                              clipped_policy_loss, kl_k3, parse_reward_spec, policy_loss, token_logps)
from trainer.train_agent import (AGENT_REWARDS, AgentReward, Episode, agent_rollout, answer_reward,  # noqa: E402
                                 convert_gsm8k, default_thinking_ratio, episode_metrics, gt_found, numbers_in,
                                 pack_episodes, tool_reward)

pytestmark = pytest.mark.usefixtures("one_thread")

THINK = "<think>\n\n</think>\n\n"  # what the template pre-fills after the assistant header with thinking off
CALC = tool_schemas(["calculate_math"])


# ================================================================================================ a fake policy
class ToolScriptPolicy(torch.nn.Module):
    """A stand-in for a trained agent, decoded by the REAL engine (BatchDecoder, KV cache, admit/keep/advance).

    It keeps each row's token ids in its KV cache (channel 0 of layer 0's keys holds id + 1; 0 = padding), so the
    engine's cache merges, evictions and re-prefills carry them along like real keys. At every step it decodes
    the row's whole history, asks `script(context_text) -> reply` what this turn should say, and puts all the
    probability on the next token of that reply (then EOS). The reply may depend on anything in the context,
    e.g. a tool result: so the replies show what actually reached the model."""

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
        logits = torch.full((b, 1, c.vocab_size), -100.0)
        for i in range(b):
            hist = [int(x) - 1 for x in keys[i, 0, :, 0].tolist() if x > 0]
            start = len(hist) - 1 - hist[::-1].index(self.tok.bos_token_id)  # this turn's <|im_start|>
            context = self.tok.decode(hist[:start], skip_special_tokens=False)
            target = self.tok(self.script(context), add_special_tokens=False).input_ids + [self.tok.eos_token_id]
            done = len(hist) - (start + 1 + self.header)  # tokens of this turn sampled so far
            logits[i, 0, target[min(done, len(target) - 1)]] = 100.0
        return SimpleNamespace(logits=logits)


def call(name, **arguments):
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def last_user(context):
    return re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", context, re.S)[-1]


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


def play(tokenizer, messages, tools, **kw):
    policy = ToolScriptPolicy(tokenizer, agent_script)
    args = dict(max_turns=3, max_gen_len=64, max_total_len=2048, temperature=1.0, thinking_ratio=0.0,
                generator=torch.Generator().manual_seed(0))
    return agent_rollout(policy, tokenizer, messages, tools, **{**args, **kw}), policy


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
    convo = messages[0] + [{"role": "assistant", "content": THINK + calc.turns[0]},
                           {"role": "tool", "content": '{"result": "-762"}'},
                           {"role": "assistant", "content": THINK + calc.turns[1]}]
    rendered = tokenizer.apply_chat_template(convo, tools=CALC, tokenize=False)
    assert tokenizer.decode(calc.context, skip_special_tokens=False) + "\n" == rendered
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
    kw = dict(max_turns=2, max_gen_len=6, max_total_len=2048, temperature=0)
    batched = agent_rollout(model, tokenizer, messages, tools, **kw)
    for m, t, ep in zip(messages, tools, batched):
        [single] = agent_rollout(model, tokenizer, [m], [t], **kw)
        assert single.ids == ep.ids and len(ep.ids) == 6  # a random model: cut at --max_gen_len, unfinished
        assert ep.answer is None and ep.turns and ep.mask == [1] * 6
    assert model.training is False


def test_turn_cut_at_max_gen_len_and_context_limit_end_unfinished(tokenizer):
    messages, tools, _ = task_prompts()
    [ep], _ = play(tokenizer, messages[:1], tools[:1], max_gen_len=5)
    assert ep.answer is None and len(ep.ids) == 5 and ep.calls == []  # the call never closed
    prompt_len = len(ep.prompt_ids)
    # Room for the first call (48 tokens with EOS) but not for its result (35 tokens) and another turn.
    [ep], _ = play(tokenizer, messages[:1], tools[:1], max_total_len=prompt_len + 60)
    assert ep.answer is None and ep.calls == [("calculate_math", True)] and set(ep.mask) == {1}
    [ep], _ = play(tokenizer, messages[:1], tools[:1], max_total_len=prompt_len)  # no room at all
    assert ep.ids == [] and ep.turns == [] and ep.answer is None


def test_thinking_switch_is_drawn_per_episode(tokenizer):
    model = tiny_model(0).eval()
    messages, tools, _ = task_prompts()
    kw = dict(max_turns=1, max_gen_len=1, max_total_len=2048)
    eps = agent_rollout(model, tokenizer, messages * 8, tools * 8, thinking_ratio=0.5,
                        generator=torch.Generator().manual_seed(0), **kw)
    think_suffix = tokenizer("assistant\n" + THINK, add_special_tokens=False).input_ids
    prefilled = [e.prompt_ids[-len(think_suffix):] == think_suffix for e in eps]
    assert [not e.thinking for e in eps] == prefilled and 0 < sum(prefilled) < len(eps)
    again = agent_rollout(model, tokenizer, messages * 8, tools * 8, thinking_ratio=0.5,
                          generator=torch.Generator().manual_seed(0), **kw)
    assert [e.thinking for e in again] == [e.thinking for e in eps]  # from the step's generator: replayable


def test_default_thinking_ratio_follows_the_template(request, tokenizer):
    """Our template: every episode rendered as at inference (the plain header; no pre-filled empty <think>
    block, which our SFT data never shows). Upstream minimind-3's template (open_thinking): upstream's 0.1."""
    assert default_thinking_ratio(tokenizer) == 1.0
    plain = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                          add_generation_prompt=True)
    [ep] = agent_rollout(tiny_model(0).eval(), tokenizer, [[{"role": "user", "content": "hi"}]], [None],
                         thinking_ratio=default_thinking_ratio(tokenizer), max_turns=1, max_gen_len=1,
                         max_total_len=256, generator=torch.Generator().manual_seed(0))
    assert tokenizer.decode(ep.prompt_ids) == plain and not plain.endswith(THINK)
    assert default_thinking_ratio(request.getfixturevalue("mm3")) == 0.1  # skips without ../shared (conftest.py)


def test_tool_tokens_are_masked_out_of_loss_and_kl(tokenizer):
    messages, tools, _ = task_prompts()
    eps, _ = play(tokenizer, messages, tools)
    seq, attn, pos, mask = pack_episodes(eps, tokenizer.pad_token_id, "cpu")
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
def test_numbers_and_gt_matching():
    assert numbers_in("5-3=2, total 1,234.5 and = -762 or \u22127") == [5, 3, 2, 1234.5, -762, -7]
    assert gt_found("每人能分到228元", "228") and gt_found("The answer is 30.48 cm.", "30.48")
    assert gt_found("-762", "-762") and not gt_found("834-762", "-762")  # subtraction is not a sign
    assert gt_found("20,758,280", "20758280") and not gt_found("20758281", "20758280")
    assert gt_found("It is 72.0", "72") and not gt_found("It is 720", "72")
    assert gt_found("Hello World!", "hello world") and not gt_found("anything", "")


def test_reward_rules_on_fixed_episodes():
    def ep(answer=None, calls=(), turns=("x",)):
        return Episode(messages=[], tools=None, thinking=False, prompt_ids=[1], answer=answer, calls=list(calls),
                       turns=list(turns))
    episodes = [ep("The answer is -762.", [("calculate_math", True)]),       # right, one good call
                ep("-762", [("calculate_math", True), ("web_search", False)]),  # right, one unknown tool
                ep("no idea", [("", False)]),                                 # malformed block, wrong
                ep(None, [("calculate_math", True)] * 3),                     # out of turns
                ep("228 and 1962.5")]                                         # two of two gt, no calls
    gts = [["-762"]] * 4 + [["228", "1962.5"]]
    assert [answer_reward(e.answer, g) for e, g in zip(episodes, gts)] == [1, 1, 0, 0, 1]
    assert answer_reward("228", ["228", "1962.5"]) == 0.5
    assert [tool_reward(e.calls) for e in episodes] == [1, 0, -1, 1, 0]
    fn = AgentReward(parse_reward_spec("answer:1,tool:0.2,unfinished:0.5", AGENT_REWARDS))
    total, parts = fn(episodes, [[]] * 5, gts)
    assert torch.allclose(total, torch.tensor([1.2, 1.0, -0.2, -0.3, 1.0]))
    assert parts["unfinished"].tolist() == [0, 0, 0, -1, 0]
    m = episode_metrics(episodes, gts)
    assert m["tool_calls"] == 7 / 5 and m["valid_call_rate"] == 5 / 7 and m["accuracy"] == 3 / 5
    with pytest.raises(ValueError, match="unknown term 'format'"):
        parse_reward_spec("format", AGENT_REWARDS)

    class FakeRM:
        def __call__(self, convs):
            return torch.tensor([len(c[-1]["content"]) for c in convs], dtype=torch.float)
    total, parts = AgentReward([("model", 1.0)], FakeRM(), reward_clip=3.0)(episodes[2:4], [[]] * 2, gts[2:4])
    assert parts["model"].tolist() == [3.0, 1.0]  # "no idea" clipped to 3; unfinished: its last turn "x"


# ================================================================================================ data
def test_convert_gsm8k(tmp_path):
    src = write_jsonl(tmp_path / "g.jsonl", [{"question": " Q1? ", "answer": "so\n#### 1,234"},
                                             {"question": "Q2", "answer": "#### -0.5"}])
    dst = tmp_path / "agent.jsonl"
    assert convert_gsm8k(src, dst) == 2
    recs = [json.loads(x) for x in dst.read_text(encoding="utf-8").splitlines()]
    assert [r["gt"] for r in recs] == [["1234"], ["-0.5"]]
    conv = recs[0]["conversations"]
    assert [t["role"] for t in conv] == ["system", "user", "assistant"] and conv[1]["content"] == "Q1?"
    assert json.loads(conv[0]["tools"]) == CALC
    from dataset.lm_dataset import AgentRLDataset, DataFormatError
    from model.checkpoint import load_tokenizer
    item = AgentRLDataset(dst, load_tokenizer())[0]
    assert item["tools"] == CALC and item["gt"] == ["1234"] and "calculate_math" in item["prompt"]
    assert convert_gsm8k(src, dst, limit=1) == 1
    with pytest.raises(DataFormatError, match="g.jsonl:2"):
        convert_gsm8k(write_jsonl(tmp_path / "g.jsonl", [{"question": "a", "answer": "#### 1"},
                                                         {"question": "b", "answer": "none"}]), dst)


# ================================================================================================ the script
FAST = ["--max_gen_len", "8", "--batch_size", "2", "--num_generations", "2", "--temperature", "1.0",
        "--learning_rate", "1e-3", "--max_turns", "2", "--thinking_ratio", "0.5"]


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base_64.pth"
    torch.save(tiny_model(0).state_dict(), path)
    return path


def test_train_agent_resume_equals_uninterrupted(tmp_path, base_weights, tiny_reward_model):
    common = [*FAST, "--from_weight", base_weights, "--data_path", SAMPLE / "agent_rl.jsonl", "--max_steps", 2,
              "--reward", "answer:1,tool:0.2,unfinished:0.2,model:1", "--reward_model_path", tiny_reward_model]
    straight, resumed, stopped = straight_and_resumed("train_agent.py", common, [], ["--max_steps", 1], tmp_path)
    assert stopped == {"agent_64_resume.pth": (1, 2)}
    ref, rows = train_log(straight / "out", "agent_64"), train_log(resumed / "out", "agent_64")
    assert [r["step"] for r in ref] == [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "reward_std", "reward_model", "reward_unfinished", "tool_calls", "valid_call_rate",
                "accuracy", "turns", "response_len", "tool_tokens", "loss", "kl", "clip_frac", "grad_norm"):
        for a, b in zip(rows, ref):
            assert math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-7), (key, a[key], b[key])
    assert all(r["reward_std"] > 0 and r["grad_norm"] > 0 for r in rows)
    assert rows[1]["kl"] > 0  # the policy moved away from the reference after step 1
    weights = torch.load(resumed / "out" / "agent_64.pth", weights_only=True)
    assert all(w.dtype == torch.float16 for w in weights.values())


def test_train_agent_two_process_gloo_on_gsm8k_tasks(tmp_path, base_weights, tiny_reward_model, run_in_process):
    gsm8k = write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"}
                                                   for i in range(16)])
    data = tmp_path / "agent_gsm8k.jsonl"
    out = run_in_process(ROOT / "trainer" / "train_agent.py", "--convert_gsm8k", gsm8k, "--data_path", data)
    assert "wrote 16 calculator episodes" in out
    run_trainer("train_agent.py", *FAST, "--from_weight", base_weights, "--data_path", data, "--max_steps", 2,
                "--loss_type", "grpo", "--reward", "answer,unfinished:0.5,model:1",
                "--reward_model_path", tiny_reward_model, tmp=tmp_path / "run", nproc=2)
    rows = train_log(tmp_path / "run" / "out", "agent_64")
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    ck = torch.load(tmp_path / "run" / "ckpt" / "agent_64_resume.pth", weights_only=True)
    assert ck["world_size"] == 2 and ck["consumed"] == 2 * 2 * 2


@pytest.mark.parametrize("flags, message", [(["--num_generations", 1], "--num_generations must be >= 2"),
                                             (["--reward", "gsm8k"], "unknown term 'gsm8k'"),
                                             (["--max_total_len", 100], "--max_total_len must exceed"),
                                             (["--loss_type", "dapo"], "invalid choice: 'dapo'")])
def test_train_agent_flag_errors(run_in_process, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        run_in_process(ROOT / "trainer" / "train_agent.py", *flags)
    assert e.value.code == 2 and message in capsys.readouterr().err
