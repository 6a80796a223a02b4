"""RL stages (PPO, GRPO, SPO): the shared math on hand values, rewards, reward models, rollouts, and the three
scripts end to end (incl. resume, 2-process gloo, and reward variance on real GSM8K prompts)."""
import argparse
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset.lm_dataset import DataFormatError  # noqa: E402
from model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from model.generation import generate  # noqa: E402
from helpers import (MINIMIND3_TOKENIZER, SAMPLE, SHARED, run_trainer, straight_and_resumed,  # noqa: E402
                     tiny_cpu_flags, tiny_model, train_log, write_jsonl)
from trainer.rl_utils import (RewardFunction, RewardModelScorer, RLPromptDataset, add_rl_args,  # noqa: E402
                              aggregate_loss, build_reward_function, chatml_messages, check_rl_args,
                              clipped_policy_loss, clipped_value_loss, collate_prompts, extract_gold_answer,
                              extract_predicted_answer, format_reward, gae, group_advantages, gsm8k_reward, kl_k1,
                              kl_k3, length_reward, parse_reward_spec, rollout, token_logps)
from trainer.train_ppo import CriticModel  # noqa: E402
from trainer.train_spo import SPOValueTracker  # noqa: E402
from trainer.trainer_utils import Batches, DistState, add_common_args  # noqa: E402

FAST = ["--max_gen_len", "16", "--batch_size", "2", "--max_steps", "2", "--temperature", "1.0",
        "--learning_rate", "1e-3", "--max_prompt_len", "64"]


@pytest.fixture(scope="module")
def tiny_policy():
    return tiny_model(0).eval()


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory, tiny_policy):
    path = tmp_path_factory.mktemp("base") / "base_64.pth"
    torch.save(tiny_policy.state_dict(), path)
    return path


# ================================================================================================ RL math
def naive_gae(rewards, values, length, gamma, lam):
    adv = [0.0] * length
    for t in range(length):
        total = 0.0
        for l in range(length - t):
            v_next = values[t + l + 1] if t + l + 1 < length else 0.0
            delta = rewards[t + l] + gamma * v_next - values[t + l]
            total += (gamma * lam) ** l * delta
        adv[t] = total
    return adv


def test_gae_matches_naive_recursion():
    torch.manual_seed(0)
    b, n, gamma, lam = 4, 7, 0.9, 0.8
    rewards, values = torch.randn(b, n), torch.randn(b, n)
    lengths = [7, 3, 1, 5]
    mask = (torch.arange(n)[None] < torch.tensor(lengths)[:, None]).float()
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for i, L in enumerate(lengths):
        ref = naive_gae(rewards[i].tolist(), values[i].tolist(), L, gamma, lam)
        assert torch.allclose(adv[i, :L], torch.tensor(ref), atol=1e-5)
        assert torch.all(adv[i, L:] == 0) and torch.all(ret[i, L:] == 0)
        assert torch.allclose(ret[i, :L], adv[i, :L] + values[i, :L], atol=1e-6)
    # gamma = lam = 1 with a terminal reward only: every advantage is R - V_t.
    adv1, _ = gae(torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 1.5]]), torch.ones(1, 3), 1.0, 1.0)
    assert torch.allclose(adv1, torch.tensor([[1.5, 1.0, 0.5]]))


def test_group_advantages_values_and_degenerate_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv, std = group_advantages(rewards, 4)
    s = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5]) / (s + 1e-4)
    assert torch.allclose(adv[:4], expected, atol=1e-5)
    assert torch.equal(adv[4:], torch.zeros(4))  # zero variance -> exactly no signal, no division blow-up
    assert torch.allclose(std, torch.tensor([s, 0.0]), atol=1e-6)
    adv_dr, _ = group_advantages(rewards, 4, scale_std=False)  # Dr. GRPO: centred only
    assert torch.allclose(adv_dr, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    with pytest.raises(AssertionError):
        group_advantages(torch.zeros(6), 4)


def test_kl_estimators():
    torch.manual_seed(0)
    logp, ref = torch.randn(3, 5), torch.randn(3, 5)
    k3 = kl_k3(logp, ref)
    assert torch.all(k3 >= 0)
    assert torch.equal(kl_k3(logp, logp), torch.zeros(3, 5))
    assert torch.equal(kl_k1(logp, ref), logp - ref)
    # Both are unbiased estimates of KL(p || q) when tokens are sampled from p.
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    true_kl = float((p * (p / q).log()).sum())
    g = torch.Generator().manual_seed(0)
    y = torch.multinomial(p, 200_000, replacement=True, generator=g)
    lp, lq = p.log()[y], q.log()[y]
    assert abs(float(kl_k3(lp, lq).mean()) - true_kl) < 0.01
    assert abs(float(kl_k1(lp, lq).mean()) - true_kl) < 0.01


def test_clipped_policy_loss_on_hand_values():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped = clipped_policy_loss(logp[None], old[None], adv[None], clip_eps=0.2)
    assert torch.allclose(loss[0], torch.tensor([-1.2, 1.5, -0.5, 0.8]), atol=1e-6)
    assert clipped[0].tolist() == [True, False, False, True]
    # clip-higher (DAPO): the upper bound moves, the lower one stays.
    loss_hi, _ = clipped_policy_loss(logp[None], old[None], adv[None], 0.2, clip_eps_high=0.28)
    assert torch.allclose(loss_hi[0], torch.tensor([-1.28, 1.5, -0.5, 0.8]), atol=1e-6)
    # A per-sequence advantage broadcasts over tokens; at ratio 1 the gradient is -A * grad(logp).
    lp = torch.zeros(2, 3, requires_grad=True)
    l, _ = clipped_policy_loss(lp, lp.detach(), torch.tensor([2.0, -1.0]))
    l.sum().backward()
    assert torch.allclose(lp.grad, torch.tensor([[-2.0] * 3, [1.0] * 3]))


def test_clipped_value_loss_on_hand_values():
    old, ret = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 0.0])
    values = torch.tensor([1.0, 0.1, 0.5])
    loss = clipped_value_loss(values, old, ret, clip_eps=0.2)
    # v=1 moved past the clip: clipped value 0.2 -> 0.5 * 0.8^2; v=0.1 inside: 0.5 * 0.9^2;
    # v=0.5 from 1.0: clipped 0.8 -> max(0.25, 0.64) * 0.5.
    assert torch.allclose(loss, torch.tensor([0.32, 0.405, 0.32]), atol=1e-6)


def test_loss_aggregations():
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert math.isclose(float(aggregate_loss(loss, mask, "grpo")), (1.0 + 4.0) / 2, rel_tol=1e-6)
    assert math.isclose(float(aggregate_loss(loss, mask, "dapo")), 8.0 / 5, rel_tol=1e-6)
    assert math.isclose(float(aggregate_loss(loss, mask, "dr_grpo", max_len=8)), 8.0 / 16, rel_tol=1e-6)
    with pytest.raises(ValueError):
        aggregate_loss(loss, mask, "nope")


# ================================================================================================ SPO tracker
def test_spo_tracker_updates_on_hand_values():
    t = SPOValueTracker(3, rho_min=0.5, rho_max=0.96, d_half=0.06, rho_mode="constant", rho_const=0.9)
    idx = torch.tensor([0])
    assert float(t.baselines(idx, fallback=0.5)[0]) == 0.5  # unseen: the prior (fallback on the first batch)
    t.update(idx, torch.tensor([1.0]), fallback=0.5)
    # Prior weight n0 = 1/(1-0.5) = 2 at mean 0.5 -> S=1, W=2; then S=0.9*1+1, W=0.9*2+1.
    assert math.isclose(float(t.baselines(idx)[0]), 1.9 / 2.8, rel_tol=1e-6)
    t.update(idx, torch.tensor([0.0]))
    assert math.isclose(float(t.baselines(idx)[0]), 1.71 / 3.52, rel_tol=1e-6)
    # The global prior now holds both rewards, discounted by rho_max: (0.96*1 + 0) / (0.96 + 1).
    assert math.isclose(float(t.baselines(torch.tensor([2]))[0]), 0.96 / 1.96, rel_tol=1e-6)

    # KL-adaptive: rho = 2^(-D/D_half) clipped to [rho_min, rho_max], D = drift since the last visit.
    k = SPOValueTracker(2, rho_min=0.5, rho_max=0.96, d_half=0.06, rho_mode="kl")
    k.update(idx, torch.tensor([1.0]), fallback=0.0)  # first visit: D = 0 -> rho = rho_max
    assert math.isclose(float(k.S[0]), 0.96 * 2 * 0.0 + 1.0) and math.isclose(float(k.W[0]), 0.96 * 2 + 1)
    k.advance_clock(0.03)
    assert math.isclose(float(k.rho(idx)[0]), 2 ** -0.5, rel_tol=1e-9)
    k.advance_clock(1.0)
    assert math.isclose(float(k.rho(idx)[0]), 0.5)  # clipped at rho_min
    k.update(idx, torch.tensor([0.0]))
    assert math.isclose(float(k.S[0]), 0.5 * 1.0) and float(k.rho(idx)[0]) == 0.96  # visited now: D = 0

    # Resume: the whole state is in buffers.
    fresh = SPOValueTracker(2, rho_mode="kl")
    fresh.load_state_dict(k.state_dict(), strict=True)
    assert torch.equal(fresh.baselines(torch.tensor([0, 1])), k.baselines(torch.tensor([0, 1])))
    assert float(fresh.clock) == float(k.clock)


# ================================================================================================ rewards
def test_format_and_length_rewards():
    good = "<think>\nadd them\n</think>\n<answer>\n5\n</answer>"
    assert format_reward(good) == 1.0
    assert format_reward("  " + good + "\n") == 1.0
    assert format_reward("<think>a</think> chatter <answer>5</answer>") == 0.5  # all tags, wrong layout
    assert format_reward("<think>a</think><answer>5") == 0.375
    assert format_reward(good + "<answer>6</answer>") == 0.25  # duplicated answer tags do not count
    assert format_reward("plain text") == 0.0
    assert length_reward("x" * 10, 20) == 0.0
    assert length_reward("x" * 30, 20) == -0.5
    assert length_reward("x" * 100, 20) == -1.0


def test_gsm8k_answer_extraction():
    assert extract_gold_answer("He pays 2*3=<<2*3=6>>6.\n#### 1,234") == 1234.0
    assert extract_gold_answer("#### -5") == -5.0
    assert extract_gold_answer("#### 3.5") == 3.5
    assert extract_gold_answer("no marker 12") is None
    assert extract_predicted_answer("<think>3 + 4 = 7</think><answer>The total is $1,234.</answer>") == 1234.0
    assert extract_predicted_answer("first 12 then 3, so I think -7 apples") == -7.0
    assert extract_predicted_answer("0.5 and then 2.50") == 2.5
    assert extract_predicted_answer("it drops to \u22123 degrees") == -3.0
    assert extract_predicted_answer("<answer>12</answer> but maybe 13") == 12.0  # the tagged answer wins
    assert extract_predicted_answer("no digits here") is None
    assert gsm8k_reward("<answer>1234</answer>", "#### 1,234") == 1.0
    assert gsm8k_reward("The answer is 1,234.00", "#### 1234") == 1.0
    assert gsm8k_reward("The answer is 1233", "#### 1234") == 0.0
    assert gsm8k_reward("nothing", "#### 1") == 0.0
    with pytest.raises(DataFormatError, match="####"):
        gsm8k_reward("5", "无")


def test_reward_spec_parsing():
    assert parse_reward_spec("model:1.0,format:0.5,length") == [("model", 1.0), ("format", 0.5), ("length", 1.0)]
    assert parse_reward_spec(" gsm8k : 2 ") == [("gsm8k", 2.0)]
    for bad in ("", "foo", "format:x", "format,format"):
        with pytest.raises(ValueError):
            parse_reward_spec(bad)


def rl_parser():
    parser = argparse.ArgumentParser(conflict_handler="resolve")  # as the RL scripts build theirs
    add_common_args(parser, stage="grpo", data_path="x.jsonl")
    add_rl_args(parser, max_prompt_len=256)
    return parser


def test_rl_flags_prompt_len_alias_and_reward_terms(capsys):
    parser = rl_parser()
    args = parser.parse_args(["--reward", "format:0.5,gsm8k"])
    assert args.max_prompt_len == 256 and not hasattr(args, "max_seq_len")  # one flag, one meaning
    assert parser.parse_args(["--max_seq_len", "64"]).max_prompt_len == 64  # upstream's spelling
    assert parser.parse_args(["--max_prompt_len", "32"]).max_prompt_len == 32
    before = dict(vars(args))
    assert check_rl_args(parser, args) == [("format", 0.5), ("gsm8k", 1.0)]
    assert vars(args) == before  # the parsed terms are returned, not stored on args
    with pytest.raises(SystemExit):
        check_rl_args(parser, parser.parse_args(["--reward", "nope"]))
    assert "unknown term 'nope'" in capsys.readouterr().err


class _DataBuilt(Exception):
    """Raised by a recording prompt dataset: the stage script stops once its data is built."""


@pytest.mark.parametrize("script", ["train_grpo.py", "train_ppo.py", "train_spo.py"])
def test_thinking_ratio_flag_and_template_defaults(request, tmp_path, monkeypatch, run_in_process, tokenizer,
                                                   base_weights, script):
    """--thinking_ratio in GRPO, PPO and SPO: the share of prompts rendered with the template's thinking switch on,
    drawn per prompt. Unset: upstream's 0.9 with upstream's minimind-3 template (90% of the prompts open <think>,
    the rest pre-fill the empty block) and 1.0 with ours (every prompt the plain header, as before the flag)."""
    import trainer.rl_utils as rl
    seen = {}

    class Recorder(rl.RLPromptDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.update(ratio=self.thinking_ratio, prompts=[self[i]["prompt"] for i in range(len(self))])
            raise _DataBuilt

    monkeypatch.setattr(rl, "RLPromptDataset", Recorder)
    request.getfixturevalue("mm3")  # skips without ../shared (conftest.py)
    m3 = MINIMIND3_TOKENIZER
    common = [*tiny_cpu_flags(tmp_path / "out", tmp_path / "ckpt"), *FAST, "--from_weight", base_weights,
              "--data_path", SAMPLE / "rlaif.jsonl", "--reward", "format:1.0", "--max_prompt_len", 0]
    for tok_path, flag, ratio, opened in [(None, [], 1.0, "<|im_start|>assistant\n"),
                                          (m3, [], 0.9, "<|im_start|>assistant\n<think>\n"),
                                          (m3, ["--thinking_ratio", 0.25], 0.25, "<|im_start|>assistant\n<think>\n"),
                                          (None, ["--thinking_ratio", 0.5], 0.5, "<|im_start|>assistant\n")]:
        tok_flag = ["--tokenizer_path", tok_path] if tok_path else []
        with pytest.raises(_DataBuilt):
            run_in_process(ROOT / "trainer" / script, *common, *flag, *tok_flag)
        assert seen["ratio"] == ratio
        on = [p.endswith(opened) for p in seen["prompts"]]
        off = [p.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") for p in seen["prompts"]]
        assert all(a != b for a, b in zip(on, off)), "every prompt is either switched on or off"
        assert abs(sum(on) / len(on) - ratio) < 0.12, (sum(on), len(on), ratio)
    with pytest.raises(SystemExit):
        run_in_process(ROOT / "trainer" / script, *common, "--thinking_ratio", 1.5)


def test_reward_model_sequence_classification(tiny_reward_model, tokenizer):
    scorer = RewardModelScorer.load(tiny_reward_model, batch_size=3)
    assert not scorer.has_get_score
    convs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello " * k}] for k in range(1, 6)]
    batched = scorer(convs)
    one_by_one = torch.cat([scorer([c]) for c in convs])
    assert batched.shape == (5,) and torch.isfinite(batched).all()
    assert torch.allclose(batched, one_by_one, atol=1e-5)  # right padding does not change scores
    # The score is logits[0] of the conversation rendered with the reward model's own chat template.
    text = tokenizer.apply_chat_template(convs[2], tokenize=False)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
    assert torch.allclose(batched[2], scorer.model(input_ids=ids).logits[0, 0], atol=1e-5)
    assert len(set(batched.tolist())) > 1
    with pytest.raises(FileNotFoundError, match="reward model not found"):
        RewardModelScorer.load(tiny_reward_model / "missing")


def test_reward_model_get_score_and_weighted_sum():
    class FakeInternLM2Reward:  # the InternLM2 reward model's interface
        def get_score(self, tokenizer, messages):
            assert messages[-1]["role"] == "assistant" and messages[0]["role"] == "user"
            return 10.0 if "good" in messages[-1]["content"] else -1.0

    scorer = RewardModelScorer(FakeInternLM2Reward(), tokenizer=None)
    assert scorer.has_get_score
    fn = RewardFunction([("model", 1.0), ("format", 0.5), ("gsm8k", 2.0)], scorer, reward_clip=3.0)
    messages = [[{"role": "user", "content": "q"}]] * 2
    responses = ["<think>x</think><answer>good 4</answer>", "bad 5"]
    total, parts = fn(messages, responses, ["#### 4", "#### 4"])
    assert torch.allclose(parts["model"], torch.tensor([3.0, -1.0]))  # clipped at +-3
    assert torch.allclose(parts["format"], torch.tensor([1.0, 0.0]))
    assert torch.allclose(parts["gsm8k"], torch.tensor([1.0, 0.0]))
    assert torch.allclose(total, torch.tensor([3.0 + 0.5 + 2.0, -1.0]))
    with pytest.raises(ValueError):
        RewardFunction([("model", 1.0)], None)
    # A stage's own rules fn(response, answer, extra) (agent RL: AGENT_RULES), per-row extras, the weighted sum
    # clipped to +-total_clip, and a None response (an unfinished episode) scored by the reward model as "".
    seen = []
    fn = RewardFunction([("model", 1.0), ("echo", 2.0)], scorer, reward_clip=3.0, total_clip=4.0,
                        rules={"echo": lambda r, a, x: seen.append((r, a)) or x})
    total, parts = fn(messages, [responses[0], None], ["a", "b"], extras=[1.0, -3.0])
    assert seen == [(responses[0], "a"), (None, "b")]
    assert torch.allclose(parts["echo"], torch.tensor([1.0, -3.0]))
    assert torch.allclose(parts["model"], torch.tensor([3.0, -1.0]))
    assert torch.allclose(total, torch.tensor([4.0, -4.0]))  # 3 + 2 = 5 and -1 - 6 = -7, clipped to +-4
    fn = build_reward_function([("echo", 1.0)], "cpu", rules={"echo": lambda r, a, x: x}, total_clip=0.5,
                               log=lambda *a: None)
    assert torch.allclose(fn(messages, responses, ["a", "b"], [2.0, 0.25])[0], torch.tensor([0.5, 0.25]))


def test_chatml_messages_roundtrip(tokenizer):
    turns = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "line 1\nline 2"}]
    prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert chatml_messages(prompt) == turns


# ================================================================================================ prompts, data order
def test_prompt_dataset_keeps_the_end_of_long_prompts(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "short"}, {"question": "word " * 200 + "final question"}])
    full, cut = RLPromptDataset(path, tokenizer, 0), RLPromptDataset(path, tokenizer, 16)
    assert cut[0]["index"] == 0 and cut[0]["messages"] == [{"role": "user", "content": "short"}]
    whole = tokenizer(full[0]["prompt"], add_special_tokens=False).input_ids
    assert cut[0]["prompt_ids"] == full[0]["prompt_ids"] == whole  # short enough: kept whole
    long_ids = full[1]["prompt_ids"]
    assert len(long_ids) > 200 and cut[1]["prompt_ids"] == long_ids[-16:]  # the question and assistant header
    assert tokenizer.decode(cut[1]["prompt_ids"]).endswith("final question<|im_end|>\n<|im_start|>assistant\n")
    assert cut[1]["prompt"] == full[1]["prompt"]  # the reward model still sees the whole conversation


def test_prompt_batches_resume_and_epoch_rollover(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(10)])
    ds = RLPromptDataset(path, tokenizer, 64)

    def prompt_batches(state=None):
        batches = Batches(ds, collate_prompts, DistState(), batch_size=4, epochs=2, seed=42)
        if state:
            batches.load_state_dict(state)
        return batches, iter(batches)

    full, it = prompt_batches()
    order = [next(it)[0]["index"].tolist() for _ in range(3)]
    assert sorted(sum(order, [])) == list(range(10))  # one epoch: 4 + 4 + 2
    assert full.state_dict() == {"epoch": 1, "consumed": 0}  # the epoch's last batch rolled the position over
    nxt = next(it)[0]
    assert full.state_dict() == {"epoch": 1, "consumed": 4}
    assert nxt["prompt_ids"][0] == ds[int(nxt["index"][0])]["prompt_ids"] and nxt["answer"][0].startswith("####")

    _, it2 = prompt_batches({"epoch": 0, "consumed": 4})  # as saved after the first batch
    assert [next(it2)[0]["index"].tolist() for _ in range(3)] == order[1:] + [nxt["index"].tolist()]


def test_rl_resume_on_another_world_size_counts_optimizer_steps(tmp_path, tokenizer, tiny_policy):
    """Two rollout batches of 3 optimizer steps each (e.g. GRPO --num_iterations 3) on one process, resumed on two:
    the same 4 prompts are one batch of the 2-process run, so the run is 3 optimizer steps in (plain
    load_checkpoint would say 1: it counts batches)."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": f"q{i}"} for i in range(10)])
    ds = RLPromptDataset(path, tokenizer, 64)
    one = Batches(ds, collate_prompts, DistState(), batch_size=2, epochs=1, seed=42)
    it = iter(one)
    next(it), next(it)
    opt = torch.optim.AdamW(tiny_policy.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    resume = tmp_path / "r.pth"
    save_checkpoint(tmp_path / "w.pth", resume, tiny_policy, opt, scaler, 6, one, DistState())

    def on_two_ranks(load, **kw):
        two = Batches(ds, collate_prompts, DistState(rank=0, world_size=2), batch_size=2, epochs=1, seed=42)
        return load(resume, tiny_policy, opt, scaler, two, world_size=2, **kw)[0]

    assert on_two_ranks(load_checkpoint) == 1
    assert on_two_ranks(load_checkpoint, steps_per_group=3) == 3
    assert load_checkpoint(resume, tiny_policy, opt, scaler, one, world_size=1, steps_per_group=3)[0] == 6


# ================================================================================================ rollout
def response_ids(ro):
    """The sampled tokens of a Rollout, (B, N): what follows the (left-padded) prompts."""
    return ro.sequences[:, ro.prompt_len:]


def test_rollout_batched_greedy_equals_one_by_one(tiny_policy, tokenizer):
    prompts = ["hello", "a much longer prompt with many more words in it", "mid size prompt"]
    batched = rollout(tiny_policy, tokenizer, prompts, max_gen_len=8, temperature=0)
    assert batched.sequences.shape[1] == batched.prompt_len + 8
    for i, p in enumerate(prompts):
        single = rollout(tiny_policy, tokenizer, [p], max_gen_len=8, temperature=0)
        assert torch.equal(response_ids(single)[0], response_ids(batched)[i])
        assert single.responses[0] == batched.responses[i]


def test_rollout_response_mask_stops_after_eos(tokenizer):
    model = tiny_model(1).eval()
    prompts = ["one two three", "four five", "six"]  # plain text: no <|im_end|> (EOS) inside the prompts
    first = rollout(model, tokenizer, prompts, max_gen_len=6, temperature=0)
    first = response_ids(first)[0, 0]
    with torch.no_grad():  # make EOS beat row 0's first greedy token (tied embeddings: logit = h . e)
        emb = model.model.embed_tokens.weight
        emb[tokenizer.eos_token_id] = 3.0 * emb[first]
    ro = rollout(model, tokenizer, prompts, max_gen_len=6, temperature=0)
    eos = tokenizer.eos_token_id
    assert response_ids(ro)[0, 0] == eos and ro.response_mask[0].tolist() == [1, 0, 0, 0, 0, 0]
    for i in range(len(prompts)):
        resp, m = response_ids(ro)[i].tolist(), ro.response_mask[i].tolist()
        n = resp.index(eos) + 1 if eos in resp else len(resp)
        assert m == [1.0] * n + [0.0] * (len(resp) - n)
        assert all(t == tokenizer.pad_token_id for t in resp[n:])
        assert ro.attention_mask[i, ro.prompt_len:].tolist() == [int(x) for x in m]
    assert ro.responses[0] == ""  # the special EOS is stripped from the decoded text


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logps_match_sampling_logprobs(tiny_policy, tokenizer, temperature):
    torch.manual_seed(0)
    prompts = ["short", "a considerably longer prompt so that the first one is left padded"]
    ro = rollout(tiny_policy, tokenizer, prompts, max_gen_len=12, temperature=temperature, num_generations=2)
    assert ro.sequences.shape[0] == 4 and (ro.attention_mask[:, 0] == 0).any()  # left padding in play
    with torch.no_grad():
        lp = token_logps(tiny_policy, ro.sequences, ro.attention_mask, ro.position_ids,
                         ro.response_mask.shape[1], temperature)
    m = ro.response_mask.bool()
    # The sampler's own log-probs of the same draw (same global seed): the engine's, with temperature applied.
    torch.manual_seed(0)
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts for _ in range(2)]
    out = generate(tiny_policy, ids, max_new_tokens=12, temperature=temperature,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(out.sequences, ro.sequences)
    assert torch.allclose(lp[m], out.logprobs.float()[m], atol=1e-4)
    # With grad: the same numbers and a gradient that reaches the weights.
    tiny_policy.zero_grad()
    lp2 = token_logps(tiny_policy, ro.sequences, ro.attention_mask, ro.position_ids, ro.response_mask.shape[1],
                      temperature)
    (lp2 * ro.response_mask).sum().backward()
    assert torch.allclose(lp2.detach(), lp, atol=1e-5)
    assert tiny_policy.model.embed_tokens.weight.grad.abs().sum() > 0
    tiny_policy.zero_grad()


def test_critic_starts_from_policy_trunk(tiny_policy):
    critic = CriticModel.from_policy(tiny_policy)
    ids = torch.randint(3, 6400, (2, 7))
    v = critic(ids)
    assert v.shape == (2, 7) and torch.equal(v, torch.zeros(2, 7))  # zero-initialised head
    h, _, _ = tiny_policy.model(input_ids=ids)
    h2, _, _ = critic.model(input_ids=ids)
    assert torch.equal(h, h2)
    assert critic(ids, values_to_keep=3).shape == (2, 3)


# ================================================================================================ scripts
def rlaif_data():
    path = SHARED / "mini" / "rlaif.jsonl"
    return path if path.exists() else SAMPLE / "rlaif.jsonl"


def test_ppo_end_to_end_with_local_reward_model_and_resume(tmp_path, base_weights, tiny_reward_model):
    common = [*FAST, "--from_weight", base_weights, "--data_path", rlaif_data(), "--reward", "model:1.0,length:0.1",
              "--reward_model_path", tiny_reward_model, "--kl_estimator", "k3", "--ppo_epochs", 2,
              "--mini_batch_size", 1, "--critic_learning_rate", 1e-3]
    # 2 rollouts: 4 updates (2 epochs x 2 mini-batches), then 2 (--max_steps 6); or stop after the first rollout
    # and resume (actor and critic each from their own checkpoint).
    straight, resumed, stopped = straight_and_resumed("train_ppo.py", common, ["--max_steps", 6], ["--max_steps", 4],
                                                      tmp_path)
    assert stopped == {"ppo_actor_64_resume.pth": (4, 2), "ppo_critic_64_resume.pth": (4, 2)}
    ref, rows = train_log(straight / "out", "ppo_actor_64"), train_log(resumed / "out", "ppo_actor_64")
    assert [r["step"] for r in ref] == [r["step"] for r in rows] == [4, 6]
    for key in ("loss", "value_loss", "reward", "reward_model", "kl", "return", "critic_grad_norm"):
        assert math.isfinite(rows[-1][key]), key
    for key in ("loss", "value_loss", "reward", "kl", "return", "grad_norm", "critic_grad_norm"):
        assert math.isclose(rows[1][key], ref[1][key], rel_tol=1e-5, abs_tol=1e-7), (key, rows[1][key], ref[1][key])
    actor = torch.load(resumed / "out" / "ppo_actor_64.pth", weights_only=True)
    critic = torch.load(resumed / "out" / "ppo_critic_64.pth", weights_only=True)
    assert "lm_head.weight" in actor and "value_head.weight" in critic
    assert critic["value_head.weight"].abs().sum() > 0  # the critic was trained
    ck = torch.load(resumed / "ckpt" / "ppo_critic_64_resume.pth", weights_only=True)
    assert ck["step"] == 6


def test_grpo_gsm8k_reward_variance_and_resume(tmp_path, base_weights):
    data = SHARED / "mini" / "gsm8k.jsonl"
    if not data.exists():
        pytest.skip(f"{data} not found: the shared real-data folder sits beside the repo only in CI/dev setups")
    # A random tiny model never solves GSM8K; the character-length shaping term gives rewards a spread.
    # --max_prompt_len 192: whole GSM8K prompts (at FAST's 64 most would be cut, and the run refuses to start)
    common = [*FAST, "--from_weight", base_weights, "--data_path", data, "--num_generations", 3,
              "--reward", "gsm8k:1.0,format:0.5,length:0.1", "--length_target", 50, "--loss_type", "dapo",
              "--max_prompt_len", 192]
    straight, resumed, stopped = straight_and_resumed("train_grpo.py", common, [], ["--max_steps", 1], tmp_path)
    assert stopped == {"grpo_64_resume.pth": (1, 2)}
    rows = train_log(resumed / "out", "grpo_64")
    assert [r["step"] for r in rows] == [1, 2]  # the resumed run appended step 2 only
    assert all(r["reward_std"] > 0 for r in rows), rows
    assert all(0.0 <= r["zero_std_frac"] <= 1.0 and "reward_gsm8k" in r for r in rows)
    ck2 = torch.load(resumed / "ckpt" / "grpo_64_resume.pth", weights_only=True)
    assert (ck2["step"], ck2["consumed"]) == (2, 4)
    # Same prompts, same samples (per-step generators), same weights and optimizer: the resumed step 2 is the
    # uninterrupted run's step 2.
    ref = train_log(straight / "out", "grpo_64")[1]
    for key in ("reward", "reward_std", "loss", "kl", "grad_norm", "response_len"):
        assert math.isclose(rows[1][key], ref[key], rel_tol=1e-5, abs_tol=1e-7), (key, rows[1][key], ref[key])
    assert (resumed / "out" / "grpo_64.pth").exists()


def test_grpo_two_process_gloo_cispo(tmp_path, base_weights):
    # CISPO (upstream's default --loss_type, with upstream's --epsilon_high spelling of the weight cap)
    run_trainer("train_grpo.py", *FAST, "--from_weight", base_weights, "--data_path", rlaif_data(),
                "--num_generations", 2, "--reward", "format:1.0,length:0.5", "--length_target", 50,
                "--loss_type", "cispo", "--epsilon_high", 5.0, tmp=tmp_path, nproc=2)
    rows = train_log(tmp_path / "out", "grpo_64")
    assert rows[-1]["step"] == 2
    assert all(math.isfinite(r["loss"]) and 0.0 <= r["clip_frac"] <= 1.0 for r in rows)
    ck = torch.load(tmp_path / "ckpt" / "grpo_64_resume.pth", weights_only=True)
    assert ck["world_size"] == 2 and ck["consumed"] == 2 * 2 * 2
    assert ck["args"]["loss_type"] == "cispo" and ck["args"]["clip_epsilon_high"] == 4.0
    assert (tmp_path / "out" / "grpo_64.pth").exists()


def test_spo_end_to_end_saves_tracker(tmp_path, base_weights):
    run_trainer("train_spo.py", *FAST, "--from_weight", base_weights, "--data_path", rlaif_data(),
                "--reward", "format:1.0,length:0.5", "--length_target", 50, tmp=tmp_path)
    rows = train_log(tmp_path / "out", "spo_64")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.5 <= r["rho"] <= 0.96 and r["drift"] >= 0 for r in rows)
    assert (tmp_path / "out" / "spo_64.pth").exists()
    ck = torch.load(tmp_path / "ckpt" / "spo_64_resume.pth", weights_only=True)
    tracker = ck["extra"]["spo_tracker"]
    assert int(tracker["seen"].sum()) == 4  # 2 steps x 2 distinct prompts of the epoch's shuffled order
    assert float(tracker["clock"]) > 0  # the policy moved, and the drift clock measured it
