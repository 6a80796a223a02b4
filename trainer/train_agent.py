"""Agentic RL: multi-turn tool use, trained with GRPO or CISPO (upstream: trainer/train_agent.py).

Data:   episodes in upstream's agent_rl.jsonl layout (dataset/lm_dataset.py AgentRLDataset): a system message
        carrying the tool schemas, the user's task, a placeholder assistant turn, and "gt": the answers the final
        reply must contain (dataset/sample/agent_rl.jsonl has 40 of ours). A calculator task set is built from
        GSM8K train (system + calculate_math, the question, gt = [the final number]) with --convert_gsm8k.
Rollout, per batch of prompts: G = --num_generations episodes per prompt, all decoded together by ONE
        BatchDecoder (model/generation.py: a running batch over a KV cache). An episode is up to --max_turns
        assistant turns:
            sample until <|im_end|> -> parse its <tool_call> blocks -> run them (model/tools.py) -> append the
            results exactly as the chat template renders `tool` messages, then the next assistant header ->
            sample the next turn ... until a turn without calls: the final answer.
        An episode whose turn ended rejoins the running batch at once with its whole context (re-prefilled; the
        episodes that rejoin on the same step with contexts of one length share a prefill): no episode waits for
        the others' turns, and a finished episode leaves the batch.
        The completion (everything after the prompt) has a LOSS MASK: 1 for the tokens the model sampled, 0 for
        the inserted ones (tool results, the next header). The policy loss and the KL see only the model's own
        tokens; the tool results are context it reads, not text it is trained to write.
Reward (--reward, weighted terms; rules by default, no reward model needed):
        answer      the fraction of `gt` found in the final answer (numbers compared as numbers), 0 if unfinished
        tool        (valid - invalid) / calls: +1 when every call was well formed, to an offered tool, with
                    arguments the tool accepts; malformed blocks, unknown tools and bad arguments count against;
                    0 for an episode without calls
        unfinished  -1 for an episode without a final answer (out of turns, a turn cut at --max_gen_len, or the
                    context full at --max_total_len)
        model       a reward model's score of the prompt + the final answer (optional; --reward_model_path)
Algorithm: A = group-normalised reward (GRPO), shared by every sampled token of the episode; per token
        grpo    max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps_high)) + beta * k3, per-episode mean, batch mean
        cispo   -sg(min(ratio, 1 + eps_high)) * A * log pi + beta * k3, summed over the batch's sampled tokens and
                divided by their number (CISPO, MiniMax-M1: the importance weight is clipped, never a gradient)
        with k3 the KL to the frozen starting model (the same code as train_grpo.py: rl_utils.policy_loss,
        aggregate_loss); --num_iterations optimizer steps per rollout batch.
Output: out/agent_{hidden}[_moe].pth, checkpoints/agent_{hidden}[_moe]_resume.pth (exact resume), metrics in
        out/logs/agent_{hidden}[_moe].jsonl: reward and each reward_<term>, tool_calls (per episode),
        valid_call_rate, accuracy (episodes with every gt found), turns, response_len (sampled tokens per
        episode), tool_tokens (inserted tokens per episode), kl, clip_frac, zero_std_frac.

    python trainer/train_agent.py --from_weight full_sft                  # dataset/agent_rl.jsonl, CISPO
    python trainer/train_agent.py --convert_gsm8k ../shared/data/bench/gsm8k_train.jsonl \\
        --data_path dataset/agent_gsm8k.jsonl                             # build the calculator task set, exit
    python trainer/train_agent.py --data_path dataset/agent_gsm8k.jsonl --loss_type grpo --max_turns 4
    python trainer/train_agent.py --reward answer:1,tool:0.2,unfinished:0.2,model:0.5   # + a reward model
    torchrun --nproc_per_node 2 trainer/train_agent.py
    python trainer/train_agent.py --from_resume 1                         # continue an interrupted run
    python trainer/train_agent.py --benchmark_rollout 4 --from_weight none   # batched vs one-at-a-time tok/s
"""
import argparse
import copy
import json
import math
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import AgentRLDataset, DataFormatError, collate_lists, iter_jsonl  # noqa: E402
from model.atomic_io import atomic_write_text  # noqa: E402
from model.chat_template import thinking_kwargs, thinking_switches  # noqa: E402
from model.errors import UserError  # noqa: E402
from model.generation import BatchDecoder, Sampling  # noqa: E402
from model.tools import format_number, parse_tool_calls, run_tool, tool_schemas  # noqa: E402
from trainer.rl_utils import (RewardModelScorer, add_clip_args, add_rl_args, aggregate_loss,  # noqa: E402
                              check_rl_args, expand, extract_gold_answer, group_advantages, kl_k3,
                              masked_mean, policy_loss, position_ids_from_mask, reward_metrics, step_generator,
                              token_logps)
from trainer.trainer_utils import (TrainRun, add_common_args, cleanup_distributed, init_distributed,  # noqa: E402
                                   init_model, make_optimizer, model_config_from_args, optimizer_step, print0,
                                   run_main, set_lr, unwrap)

AGENT_REWARDS = ("answer", "tool", "unfinished", "model")
AGENT_LOSSES = ("grpo", "cispo")
GSM8K_SYSTEM = ("You are a careful math assistant. Use the calculate_math tool for the arithmetic, then give the "
                "final answer as a number.")


class ChatTemplateError(UserError, ValueError):
    """A chat template that does not render tool results after an assistant turn the way the rollout needs."""


# ================================================================================================================
# Data
# ================================================================================================================
def convert_gsm8k(src, dst, limit: int = 0) -> int:
    """GSM8K {"question", "answer": "... #### N"} records -> agent episodes in upstream's agent_rl.jsonl layout: a
    system message with the calculate_math tool, the question, a placeholder assistant turn, gt = [N]. Written
    atomically to `dst`; returns the number of episodes (the first `limit` only, if given)."""
    tools = json.dumps(tool_schemas(["calculate_math"]), ensure_ascii=False)
    lines = []
    for lineno, rec in iter_jsonl(src):
        if not (isinstance(rec, dict) and isinstance(rec.get("question"), str) and isinstance(rec.get("answer"), str)):
            raise DataFormatError(f'{src}:{lineno}: expected a GSM8K record {{"question", "answer": "... #### N"}}')
        gold = extract_gold_answer(rec["answer"])
        if gold is None:
            raise DataFormatError(f"{src}:{lineno}: the answer has no '#### N' line")
        lines.append(json.dumps({"conversations": [{"role": "system", "content": GSM8K_SYSTEM, "tools": tools},
                                                   {"role": "user", "content": rec["question"].strip()},
                                                   {"role": "assistant", "content": ""}],
                                 "gt": [format_number(gold)]}, ensure_ascii=False))
        if limit and len(lines) >= limit:
            break
    atomic_write_text(dst, "".join(line + "\n" for line in lines))
    return len(lines)


def fitting_prompts(dataset, max_prompt_len: int):
    """The episodes whose rendered prompt has at most `max_prompt_len` tokens (0 = all), and how many were left
    out. A prompt is never cut: its start holds the tool schemas, its end the task."""
    if not max_prompt_len:
        return dataset, 0
    keep = [i for i in range(len(dataset)) if len(dataset[i]["prompt_ids"]) <= max_prompt_len]
    return Subset(dataset, keep), len(dataset) - len(keep)


# ================================================================================================================
# Rollout: batched multi-turn episodes
# ================================================================================================================
@dataclass(eq=False)
class Episode:
    """One episode as it unfolds. The model reads `context` = prompt_ids + ids next."""
    messages: List[dict]            # the chat so far: the prompt turns, then assistant and tool turns as they happen
    tools: Optional[List[dict]]     # the schemas offered to the model
    thinking: bool                  # the chat template's thinking switch for this episode
    prompt_ids: List[int]
    ids: List[int] = field(default_factory=list)    # the completion: sampled and inserted tokens, in order
    mask: List[int] = field(default_factory=list)   # 1 = sampled by the model, 0 = inserted (tool results, header)
    turns: List[str] = field(default_factory=list)  # the text of each assistant turn
    calls: List[Tuple[str, bool]] = field(default_factory=list)  # per <tool_call>: (tool, ran ok); bad: ("", False)
    answer: Optional[str] = None    # the final answer (a turn without calls); None = unfinished
    turn_start: int = 0             # where the current turn starts in `ids`

    @property
    def context(self) -> List[int]:
        return self.prompt_ids + self.ids


def default_thinking_ratio(tokenizer) -> float:
    """--thinking_ratio when not given: how often an episode is rendered with thinking enabled.

    The disabled form pre-fills an empty <think></think> block. Upstream minimind-3's template (`open_thinking`)
    always renders a <think> block and its SFT data mostly has empty ones, so upstream's 0.1 fits it. Our
    template (`enable_thinking`) renders the plain assistant header when thinking is enabled, which is what our
    SFT data, eval_llm, eval_toolcall and the server show the model; a pre-filled empty block is a prefix it
    never saw, so the default there is 1.0 (every episode as at inference)."""
    return 0.1 if "open_thinking" in thinking_switches(tokenizer) else 1.0


def render_prompt(tokenizer, messages, tools, thinking: bool) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True,
                                         **thinking_kwargs(tokenizer, enable_thinking=thinking))


def tool_turn_ids(tokenizer, ep: Episode, reply: str, results: Sequence[str]) -> List[int]:
    """The tokens that follow the model's <|im_end|> when its reply called tools: the results as the chat
    template renders `tool` messages, then the next assistant header. Taken as the difference of two renders of
    the same chat (before and after the tool messages), so any template renders them its own way; tokenized on
    their own, which is exact because a special token (<|im_end|>) ends what comes before. Updates ep.messages."""
    history = ep.messages + [{"role": "assistant", "content": reply}]
    tool_messages = [{"role": "tool", "content": r} for r in results]
    kw = dict(tools=ep.tools, tokenize=False, **thinking_kwargs(tokenizer, enable_thinking=ep.thinking))
    before = tokenizer.apply_chat_template(history, add_generation_prompt=False, **kw)
    after = tokenizer.apply_chat_template(history + tool_messages, add_generation_prompt=True, **kw)
    eos = tokenizer.eos_token
    end = before.rfind(eos) + len(eos)
    if end < len(eos) or not after.startswith(before[:end]):
        raise ChatTemplateError(f"the chat template does not close an assistant turn with {eos!r} and render tool "
                                f"messages after it; agent rollouts need that (check --tokenizer_path)")
    ep.messages = history + tool_messages
    return tokenizer(after[end:], add_special_tokens=False).input_ids


def end_turn(tokenizer, ep: Episode, hit_eos: bool, max_turns: int, max_total_len: int,
             run: Callable = run_tool) -> bool:
    """The current turn of `ep` is over (its sampled tokens are ep.ids[ep.turn_start:]): read it, run its calls
    and, if the episode goes on, append the tool results. Returns whether the episode continues."""
    sampled = ep.ids[ep.turn_start:]
    reply = tokenizer.decode(sampled[:-1] if hit_eos else sampled, skip_special_tokens=False)
    ep.turns.append(reply)
    if not hit_eos:  # cut at --max_gen_len (or the context limit): nothing complete to act on
        return False
    visible = reply.split("</think>", 1)[1] if "</think>" in reply else reply  # calls inside reasoning do not count
    content, calls = parse_tool_calls(visible)
    malformed = max(visible.count("<tool_call>"), visible.count("</tool_call>")) - len(calls)
    ep.calls += [("", False)] * max(0, malformed)
    if not calls:
        ep.answer = content
        return False
    offered = {(t.get("function", t) or {}).get("name") for t in ep.tools or []}
    results = []
    for call in calls:
        if call["name"] in offered:
            text, ok = run(call["name"], call["arguments"])
        else:  # a real tool that this episode did not offer is as unknown to the model as a made-up one
            text, ok = json.dumps({"error": f"unknown tool {call['name'][:40]!r}; available: "
                                            f"{', '.join(sorted(n for n in offered if n))}"}, ensure_ascii=False), False
        ep.calls.append((call["name"], ok))
        results.append(text)
    if len(ep.turns) >= max_turns:  # out of turns: the results would have nobody to read them
        return False
    inserted = tool_turn_ids(tokenizer, ep, reply, results)
    if len(ep.context) + len(inserted) >= max_total_len:  # no room left for another turn
        return False
    ep.ids += inserted
    ep.mask += [0] * len(inserted)
    return True


@torch.no_grad()
def agent_rollout(model, tokenizer, messages: Sequence[List[dict]], tools: Sequence[Optional[list]], *,
                  max_turns: int, max_gen_len: int, max_total_len: int, temperature: float = 1.0,
                  top_p: float = 1.0, thinking_ratio: float = 0.0, generator: Optional[torch.Generator] = None,
                  autocast=None, run: Callable = run_tool) -> List[Episode]:
    """Play one episode per (messages, tools) pair, all in one running batch (see the module docstring).

    Each episode's thinking switch is drawn from `generator` (enabled with probability `thinking_ratio`), then
    every sampled token, so a rollout depends only on the weights, the prompts and the generator: a resumed run
    replays it exactly. A turn gets at most `max_gen_len` tokens, an episode at most `max_total_len` tokens of
    context. `run(name, arguments) -> (text, ok)` executes a call (model/tools.run_tool).
    """
    policy = unwrap(model)
    draws = torch.rand(len(messages), generator=generator,
                       device=generator.device if generator is not None else "cpu").tolist()
    episodes = []
    for m, t, u in zip(messages, tools, draws):
        thinking = u < thinking_ratio
        ids = tokenizer(render_prompt(tokenizer, m, t, thinking), add_special_tokens=False).input_ids
        episodes.append(Episode(messages=[dict(x) for x in m], tools=t, thinking=thinking, prompt_ids=ids))
    sampling = Sampling(temperature, top_p, generator=generator)
    dec = BatchDecoder(policy, tokenizer.eos_token_id, tokenizer.pad_token_id)

    def admit(group):
        # One prefill per context length: rows of equal length need no padding, so their prefill takes attention's
        # plain causal path and computes no padding tokens (the G copies of a prompt share one; an episode that
        # rejoins after its tools usually has a length of its own). The engine merges them into the running batch.
        by_len = {}
        for e in group:
            room = min(max_gen_len, max_total_len - len(e.context))
            if room > 0:  # else (a prompt longer than the budget, no room left): unfinished at once
                e.turn_start = len(e.ids)
                by_len.setdefault(len(e.context), []).append((e, room))
        for rows in by_len.values():
            dec.admit([e.context for e, _ in rows], sampling, [r for _, r in rows], tags=[e for e, _ in rows])

    was_training = policy.training
    policy.eval()
    try:
        with autocast if autocast is not None else nullcontext():
            admit(episodes)
            while len(dec):
                tok, _ = dec.sample()
                toks, stops = tok.tolist(), dec.is_stop(tok).tolist()  # the one host sync per step
                keep, ended = [], []
                for i, (row, t, stop) in enumerate(zip(dec.rows, toks, stops)):
                    row.tag.ids.append(t)
                    row.tag.mask.append(1)
                    if stop or row.generated >= row.max_new_tokens:
                        ended.append((row.tag, stop))
                    else:
                        keep.append(i)
                if ended:
                    dec.keep(keep)
                    tok = tok[torch.tensor(keep, dtype=torch.long, device=tok.device)]
                if len(dec):
                    dec.advance(tok)
                # Tools run between two decoding steps; the episodes that go on rejoin the batch together.
                admit([e for e, stop in ended if end_turn(tokenizer, e, stop, max_turns, max_total_len, run)])
    finally:
        policy.train(was_training)
    return episodes


def pack_episodes(episodes: Sequence[Episode], pad_id: int, device):
    """Episodes -> the tensors of a training forward: sequences (B, P + N) with left-padded prompts and
    right-padded completions, attention_mask (B, P + N), position_ids, loss_mask (B, N) float (1 = sampled)."""
    P = max(len(e.prompt_ids) for e in episodes)
    N = max(1, max(len(e.ids) for e in episodes))
    seq = torch.full((len(episodes), P + N), pad_id, dtype=torch.long)
    attn = torch.zeros((len(episodes), P + N), dtype=torch.long)
    loss_mask = torch.zeros((len(episodes), N))
    for i, e in enumerate(episodes):
        p, n = len(e.prompt_ids), len(e.ids)
        seq[i, P - p:P + n] = torch.tensor(e.prompt_ids + e.ids, dtype=torch.long)
        attn[i, P - p:P + n] = 1
        loss_mask[i, :n] = torch.tensor(e.mask, dtype=torch.float)
    seq, attn = seq.to(device), attn.to(device)
    return seq, attn, position_ids_from_mask(attn), loss_mask.to(device)


def episode_text(tokenizer, ep: Episode) -> str:
    """The episode as text, the inserted (loss-masked) spans marked [inserted]...[/inserted] (for --debug_mode)."""
    parts, i = [], 0
    while i < len(ep.ids):
        j = i
        while j < len(ep.ids) and ep.mask[j] == ep.mask[i]:
            j += 1
        text = tokenizer.decode(ep.ids[i:j], skip_special_tokens=False)
        parts.append(text if ep.mask[i] else f"[inserted]{text}[/inserted]")
        i = j
    return tokenizer.decode(ep.prompt_ids, skip_special_tokens=False) + "".join(parts)


# ================================================================================================================
# Rewards
# ================================================================================================================
# A number, with its sign only where a minus cannot be subtraction ("5-3" holds 5 and 3, "= -3" holds -3).
NUMBER_IN_TEXT = re.compile(r"(?<![\d.])(?:(?<!\d)-)?\d+(?:\.\d+)?")


def numbers_in(text: str) -> List[float]:
    text = text.replace(",", "").replace("\u2212", "-")  # thousands separators; U+2212 minus
    return [float(x) for x in NUMBER_IN_TEXT.findall(text)]


def gt_found(text: str, gt: str) -> bool:
    """A numeric gt is found if the text holds a number equal to it (to 1e-6); any other gt as a case-insensitive
    substring."""
    gt = str(gt).strip()
    if not gt:
        return False
    try:
        value = float(gt.replace(",", ""))
    except ValueError:
        return gt.lower() in text.lower()
    return any(math.isclose(x, value, rel_tol=1e-9, abs_tol=1e-6) for x in numbers_in(text))


def answer_reward(answer: Optional[str], gt: Sequence[str]) -> float:
    """The fraction of `gt` found in the final answer; 0 for an unfinished episode (no answer) or an empty gt."""
    if answer is None or not gt:
        return 0.0
    return sum(gt_found(answer, g) for g in gt) / len(gt)


def tool_reward(calls: Sequence[Tuple[str, bool]]) -> float:
    """(valid - invalid) / calls in [-1, 1]; 0 without calls."""
    if not calls:
        return 0.0
    valid = sum(ok for _, ok in calls)
    return (2 * valid - len(calls)) / len(calls)


class AgentReward:
    """The weighted --reward terms of a batch of episodes; returns (total (B,), {term: (B,)})."""

    def __init__(self, terms: List[Tuple[str, float]], reward_model: Optional[RewardModelScorer] = None,
                 reward_clip: float = 3.0):
        if any(n == "model" for n, _ in terms) and reward_model is None:
            raise ValueError("the 'model' reward term needs a reward model")
        self.terms, self.reward_model, self.reward_clip = terms, reward_model, reward_clip

    def __call__(self, episodes: Sequence[Episode], prompts: Sequence[List[dict]], gts: Sequence[Sequence[str]]):
        parts = {}
        for name, _ in self.terms:
            if name == "answer":
                parts[name] = torch.tensor([answer_reward(e.answer, g) for e, g in zip(episodes, gts)])
            elif name == "tool":
                parts[name] = torch.tensor([tool_reward(e.calls) for e in episodes])
            elif name == "unfinished":
                parts[name] = torch.tensor([-float(e.answer is None) for e in episodes])
            elif name == "model":  # the final answer (or the last turn of an unfinished episode) after the prompt
                convs = [list(p) + [{"role": "assistant", "content": e.answer if e.answer is not None
                                     else (e.turns[-1] if e.turns else "")}] for e, p in zip(episodes, prompts)]
                parts[name] = self.reward_model(convs).float().clamp(-self.reward_clip, self.reward_clip)
        total = sum(w * parts[n].float() for n, w in self.terms)
        return total.float(), parts


def episode_metrics(episodes: Sequence[Episode], gts: Sequence[Sequence[str]]) -> dict:
    """What the log shows about the episodes besides rewards (means over the batch)."""
    n_calls = sum(len(e.calls) for e in episodes)
    n_valid = sum(ok for e in episodes for _, ok in e.calls)
    n = len(episodes)
    return {"tool_calls": n_calls / n,
            "valid_call_rate": n_valid / max(1, n_calls),  # 0 when nobody called a tool
            "accuracy": sum(answer_reward(e.answer, g) == 1.0 for e, g in zip(episodes, gts)) / n,
            "turns": sum(len(e.turns) for e in episodes) / n,
            "response_len": sum(sum(e.mask) for e in episodes) / n,
            "tool_tokens": sum(len(e.mask) - sum(e.mask) for e in episodes) / n}


# ================================================================================================================
# Rollout throughput (--benchmark_rollout)
# ================================================================================================================
def benchmark_rollout(model, tokenizer, messages, tools, G: int, seed: int, log=print, **kw) -> dict:
    """Sampled tokens per second of the batched rollout (every episode in one running batch) and of one episode
    at a time (upstream's way), on the same prompts x G, after a short warm-up. Each gets its own generator of the
    same seed, so the two sample different tokens once the batches differ: tokens/s is the comparison, not the
    texts. Wall time, and on CPU also this process's CPU time: on a shared machine the wall clock measures the
    neighbours too."""
    messages, tools = expand(messages, G), expand(tools, G)
    device = next(unwrap(model).parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    agent_rollout(model, tokenizer, messages[:1], tools[:1], **{**kw, "max_gen_len": 2})  # warm-up
    out = {}
    for mode in ("batched", "one_at_a_time"):
        gen = torch.Generator(device=device).manual_seed(seed)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        if mode == "batched":
            eps = agent_rollout(model, tokenizer, messages, tools, generator=gen, **kw)
        else:
            eps = [e for m, t in zip(messages, tools)
                   for e in agent_rollout(model, tokenizer, [m], [t], generator=gen, **kw)]
        sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        tokens = sum(sum(e.mask) for e in eps)
        out[mode] = {"episodes": len(eps), "sampled_tokens": tokens, "wall_s": wall, "cpu_s": cpu,
                     "tokens_per_s": tokens / wall, "turns": sum(len(e.turns) for e in eps) / len(eps)}
        log(f"{mode}: {len(eps)} episodes, {out[mode]['turns']:.2f} turns/episode, {tokens} sampled tokens, "
            f"{wall:.2f} s wall ({tokens / wall:,.1f} tok/s)"
            + (f", {cpu:.2f} s CPU ({tokens / cpu:,.1f} tok/s)" if device.type == "cpu" else ""))
    b, o = out["batched"], out["one_at_a_time"]
    out["speedup"] = b["tokens_per_s"] / o["tokens_per_s"]
    cpu_speedup = (b["sampled_tokens"] / b["cpu_s"]) / (o["sampled_tokens"] / o["cpu_s"])
    log(f"batched / one at a time: {out['speedup']:.2f}x (wall)"
        + (f", {cpu_speedup:.2f}x (CPU time)" if device.type == "cpu" else ""))
    return out


# ================================================================================================================
# Training
# ================================================================================================================
def main():
    parser = argparse.ArgumentParser(description="MiniMind agentic RL (multi-turn tool use, GRPO / CISPO)")
    add_common_args(parser, stage="agent", data_path="dataset/agent_rl.jsonl", epochs=1, batch_size=2,
                    learning_rate=3e-7, from_weight="full_sft", save_interval=10, log_interval=1, max_seq_len=None)
    add_rl_args(parser, max_prompt_len=1024, max_gen_len=768, temperature=0.8,
                reward="answer:1,tool:0.2,unfinished:0.2",
                reward_help="weighted reward terms, e.g. 'answer:1,tool:0.2,unfinished:0.2,model:0.5'; terms: answer "
                            "(fraction of gt in the final answer), tool (valid vs invalid calls), unfinished (-1 "
                            "without a final answer), model (reward model score of the final answer)",
                kl_beta=0.1)
    parser.add_argument("--num_generations", type=int, default=4, help="episodes per prompt (G)")
    parser.add_argument("--loss_type", type=str, default="cispo", choices=AGENT_LOSSES)
    add_clip_args(parser, clip_epsilon=0.2)  # --clip_epsilon/--epsilon, --clip_epsilon_high, --epsilon_high
    parser.add_argument("--num_iterations", type=int, default=1, help="optimizer steps per rollout batch")
    parser.add_argument("--max_turns", type=int, default=3, help="assistant turns per episode")
    parser.add_argument("--max_total_len", type=int, default=2500,
                        help="context limit of an episode (prompt + every turn and tool result)")
    parser.add_argument("--thinking_ratio", type=float, default=None,
                        help="probability that an episode's chat template lets the model think (else: an empty "
                             "<think></think> is pre-filled). Default: 0.1 for a template with upstream "
                             "minimind-3's open_thinking switch (upstream's default), else 1.0 (see "
                             "default_thinking_ratio)")
    parser.add_argument("--convert_gsm8k", type=str, default=None, metavar="GSM8K_JSONL",
                        help="write the calculator task set built from this GSM8K file to --data_path and exit")
    parser.add_argument("--convert_limit", type=int, default=0, help="--convert_gsm8k: first N records only")
    parser.add_argument("--debug_mode", action="store_true", help="print one episode every --debug_interval steps")
    parser.add_argument("--debug_interval", type=int, default=20)
    parser.add_argument("--benchmark_rollout", type=int, default=0, metavar="N_PROMPTS",
                        help="time the batched vs the one-at-a-time rollout on the first N prompts x G and exit")
    args = parser.parse_args()
    reward_terms = check_rl_args(parser, args, AGENT_REWARDS)
    G = args.num_generations
    if args.convert_gsm8k:
        n = convert_gsm8k(args.convert_gsm8k, args.data_path, args.convert_limit)
        print(f"wrote {n} calculator episodes from {args.convert_gsm8k} to {args.data_path}")
        return
    if G < 2 and not args.benchmark_rollout:
        parser.error("--num_generations must be >= 2: GRPO's baseline is the mean of a prompt's group")
    if args.num_iterations < 1 or args.max_turns < 1:
        parser.error("--num_iterations and --max_turns must be >= 1")
    if args.accumulation_steps != 1:
        parser.error("--accumulation_steps is not used by agent RL: each rollout batch is one update; "
                     "lower --batch_size or --num_generations to save memory")
    if args.thinking_ratio is not None and not 0.0 <= args.thinking_ratio <= 1.0:
        parser.error("--thinking_ratio must be in [0, 1]")
    if args.max_total_len <= max(args.max_prompt_len, 1):
        parser.error("--max_total_len must exceed --max_prompt_len: an episode needs room to answer")

    # ---- processes, models, reward, episodes, optimizer
    ddp = init_distributed(args.device, seed=args.seed)  # the same seed on every rank: the same initial weights
    config = model_config_from_args(args)
    # files, resume, step range, saving, logging (see its docstring); --num_iterations optimizer steps per batch
    run = TrainRun.from_flags(args, config, ddp, steps_per_batch=args.num_iterations)
    model, tokenizer = init_model(config, args.from_weight, args.save_dir, args.tokenizer_path, ddp.device, print0)
    dataset, dropped = fitting_prompts(AgentRLDataset(args.data_path, tokenizer, skip_bad_lines=args.skip_bad_lines),
                                       args.max_prompt_len)
    if dropped:
        print0(f"left out {dropped} episodes whose prompt is longer than --max_prompt_len {args.max_prompt_len}")
    if len(dataset) == 0:
        raise DataFormatError(f"{args.data_path}: no episode fits --max_prompt_len {args.max_prompt_len}")
    autocast, scaler = run.precision()
    thinking_ratio = default_thinking_ratio(tokenizer) if args.thinking_ratio is None else args.thinking_ratio
    rollout_kw = dict(max_turns=args.max_turns, max_gen_len=args.max_gen_len, max_total_len=args.max_total_len,
                      temperature=args.temperature, top_p=args.top_p, thinking_ratio=thinking_ratio,
                      autocast=autocast)
    if args.benchmark_rollout:
        items = [dataset[i] for i in range(min(args.benchmark_rollout, len(dataset)))]
        benchmark_rollout(model, tokenizer, [x["messages"] for x in items], [x["tools"] for x in items], G,
                          args.seed, print0, **rollout_kw)
        return cleanup_distributed()
    # The reference is the starting policy, copied before a resume overwrites the policy's weights.
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    scorer = None
    if any(n == "model" for n, _ in reward_terms):
        scorer = RewardModelScorer.load(args.reward_model_path, ddp.device, batch_size=args.reward_batch_size)
        print0(f"reward model: {args.reward_model_path}")
    print0("reward = " + " + ".join(f"{w:g}*{n}" for n, w in reward_terms))
    reward_fn = AgentReward(reward_terms, scorer, args.reward_clip)
    batches = run.batches(dataset, collate_fn=collate_lists)
    optimizer = make_optimizer(model.parameters(), args.learning_rate, args.weight_decay, ddp.device)
    # --from_resume 1 continues from checkpoints/
    model, step, logger = run.start(model, optimizer, scaler, batches,
                                    info=f"{G} generations per prompt, up to {args.max_turns} turns, "
                                         f"loss {args.loss_type}")

    # ---- the loop: one rollout batch -> --num_iterations optimizer steps
    for [batch] in islice(batches, run.batches_left(step)):
        step_before = step
        # 1. rollout: G episodes per prompt (consecutive rows), all turns of all episodes in one running batch; the
        #    random stream belongs to (seed, rank, step), so a resumed run plays the same episodes
        gen = step_generator(args.seed, ddp.rank, step, ddp.device)
        prompts, gts = expand(batch["messages"], G), expand(batch["gt"], G)
        episodes = agent_rollout(model, tokenizer, prompts, expand(batch["tools"], G), generator=gen, **rollout_kw)
        # 2. rewards (rules, and a reward model if asked), then each episode's advantage within its group
        rewards, parts = reward_fn(episodes, prompts, gts)
        rewards = rewards.to(ddp.device)
        advantages, group_std = group_advantages(rewards, G)
        # 3. the episodes as one padded batch; `mask` keeps the sampled tokens only (tool results are context)
        sequences, attention_mask, position_ids, mask = pack_episodes(episodes, tokenizer.pad_token_id, ddp.device)
        seq = (sequences, attention_mask, position_ids, mask.shape[1], args.temperature)
        with torch.no_grad(), autocast:
            ref_logps = token_logps(ref_model, *seq)
            # With one iteration the sampling policy is the current one: old = current.detach() below.
            old_logps = token_logps(unwrap(model), *seq) if args.num_iterations > 1 else None
        # 4. GRPO's clipped surrogate or CISPO's clipped-weight loss, + beta * KL, over the sampled tokens
        for _ in range(min(args.num_iterations, run.last_step - step)):
            lr = set_lr(optimizer, run.lr(step))
            with autocast:
                logps, aux_loss = token_logps(model, *seq, with_aux=True)
            old = logps.detach() if old_logps is None else old_logps
            pg_loss, clipped = policy_loss(args.loss_type, logps, old, advantages, args.clip_epsilon,
                                           args.clip_epsilon_high)
            kl = kl_k3(logps, ref_logps)
            loss = aggregate_loss(pg_loss + args.beta * kl, mask, args.loss_type) + aux_loss
            scaler.scale(loss).backward()
            grad_norm = optimizer_step(optimizer, scaler, args.grad_clip)
            step += 1
        # 5. log, save (after the whole batch: a resume continues with the next one)
        logger.add(tokens=mask.sum(), loss=loss, **reward_metrics(rewards, parts), **episode_metrics(episodes, gts),
                   zero_std_frac=(group_std < 1e-6).float().mean(), kl=masked_mean(kl.detach(), mask),
                   clip_frac=masked_mean(clipped.float(), mask))
        logger.log(step, {"lr": lr, "grad_norm": grad_norm}, epoch=batches.current_epoch)
        if args.debug_mode and ddp.is_main and (step_before == 0 or step // args.debug_interval
                                                   > step_before // args.debug_interval):
            logger.info(f"episode 0 (gt {gts[0]}, reward {float(rewards[0]):.3f}):\n"
                        f"{episode_text(tokenizer, episodes[0])}")
        run.maybe_save(step, model, optimizer, scaler, batches)
    run.finish(step)


if __name__ == "__main__":
    run_main(main)
