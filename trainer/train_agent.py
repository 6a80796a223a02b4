"""Agentic RL: multi-turn tool use, trained with GRPO or CISPO (upstream: trainer/train_agent.py).

Data:    tasks in upstream's agent_rl.jsonl layout (dataset/lm_dataset.py AgentRLDataset): a system message with the
         tool schemas, the user's task, a placeholder assistant turn, "gt" (what the final answer must contain) and,
         optionally, "n_calls" (how many calls the task needs). scripts/make_tool_data.py writes such tasks for every
         tool of model/tools.py, and converts GSM8K into calculator tasks (--from_gsm8k).
Rollout: G = --num_generations episodes per task, all played in ONE running batch by model/tool_loop.py:
         sample a turn -> parse its <tool_call>s -> run them -> append the results to the live KV cache -> next
         turn ... until a turn without calls (the answer), --max_turns, or --max_gen_len / --max_total_len.
         Every token has a mask: 1 = sampled by the model, 0 = inserted (tool results, headers). The loss and the
         KL see only the sampled tokens: the tool results are context the model reads, not text it writes.
Reward:  --reward, weighted terms (trainer/rl_utils.py AGENT_RULES, combined by the same RewardFunction as every
         RL stage, the sum clipped to +-reward_total_clip):
           answer      fraction of gt in the final answer (model/scoring.py, the tool eval's rule); 0 unless the
                       episode finished, and 0 for a task that needs a tool but made no successful call
           tool        (successful - failed calls) / calls      calls   -|calls - needed| / needed
           format      -1 for an unclosed <tool_call> / <think>  unfinished  -1 without a final answer
           repetition  -(share of repeated 4-grams in the text)  model   a reward model's score (optional)
         So a task that needs a tool and gets none never beats a valid call with a wrong answer.
Groups:  a group whose rewards are all equal has advantage 0 and teaches nothing (at the start of training most
         do). DAPO's dynamic sampling: such groups are replaced by groups of other tasks, drawn with the step's
         generator, for up to --dynamic_sampling rounds; the shares before and after are logged.
Loss:    A = group-normalised reward, shared by the episode's sampled tokens; per token
           grpo    max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps_high)) + beta * k3
           cispo   -sg(min(ratio, 1 + eps_high)) * A * log pi + beta * k3   (MiniMax-M1)
         with k3 the KL to the frozen starting model; --num_iterations optimizer steps per rollout batch.
Output:  out/agent_{hidden}[_moe].pth, checkpoints/agent_{hidden}[_moe]_resume.pth (exact resume), metrics in
         out/logs/agent_{hidden}[_moe].jsonl (reward and each reward_<term>, accuracy, tool_calls, zero_std_frac...).

    python trainer/train_agent.py --from_weight tool_sft --data_path out/tool_data/agent_rl.jsonl
    python trainer/train_agent.py --loss_type grpo --reward answer:1,tool:0.2,calls:0.5,model:0.5
    torchrun --nproc_per_node 2 trainer/train_agent.py
    python trainer/train_agent.py --from_resume 1          # continue an interrupted run
"""
import argparse
import sys
from itertools import islice
from pathlib import Path

import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import AgentRLDataset, DataFormatError, check_trainable, collate_lists  # noqa: E402
from model.checkpoint import load_tokenizer  # noqa: E402
from model.config_flags import model_config_from_args  # noqa: E402
from model.errors import run_main  # noqa: E402
from model.runtime import unwrap  # noqa: E402
from model.tool_loop import new_episodes  # noqa: E402
from trainer.rl_utils import (AGENT_RULES, LocalRollouts, RewardModelScorer, RewardFunction,  # noqa: E402
                              add_clip_args, add_rl_args, aggregate_loss, check_rl_args, expand, group_advantages,
                              kl_k3, make_rollout_engine, masked_mean, policy_loss, position_ids_from_mask,
                              reward_metrics, step_generator, thinking_ratio, token_logps)
from trainer.trainer_utils import (Batches, TrainRun, add_common_args, frozen_copy, init_distributed,  # noqa: E402
                                   init_model, make_optimizer, mixed_precision, optimizer_step, print0, set_lr,
                                   wrap_model)

AGENT_REWARDS = (*AGENT_RULES, "model")


def rollout(model, tokenizer, tasks, G: int, gen: torch.Generator, args, thinking_ratio: float, autocast,
            rollouts=LocalRollouts()):
    """G episodes per task (consecutive), all in one running batch (--rollout_engine local) or a turn at a time on
    the inference server (http); each episode's thinking switch is drawn from `gen` first, then every token: a
    rollout depends only on the weights, the tasks and the generator."""
    messages, tools = expand([t["messages"] for t in tasks], G), expand([t["tools"] for t in tasks], G)
    thinking = (torch.rand(len(messages), generator=gen, device=gen.device) < thinking_ratio).tolist()
    episodes = new_episodes(tokenizer, messages, tools, thinking)
    return rollouts.episodes(model, tokenizer, episodes, max_turns=args.max_turns, max_new_tokens=args.max_gen_len,
                             max_total_len=args.max_total_len, temperature=args.temperature, top_p=args.top_p,
                             generator=gen, autocast=autocast)


def score(reward_fn, episodes, tasks, G: int):
    """Rewards (B*G,), their terms, and each group's reward spread (B,)."""
    gts, needs = expand([t["gt"] for t in tasks], G), expand([t["n_calls"] for t in tasks], G)
    rewards, parts = reward_fn(expand([t["messages"] for t in tasks], G), [e.answer for e in episodes], gts,
                               [(e, n) for e, n in zip(episodes, needs)])
    return rewards, parts, rewards.view(-1, G).std(dim=1, correction=0)


def pack(episodes, pad_id: int, device):
    """Episodes -> (sequences (B, P+N): left-padded prompts, right-padded completions; attention_mask; position
    ids; loss mask (B, N), 1 on sampled tokens)."""
    P, N = max(len(e.prompt_ids) for e in episodes), max(1, max(len(e.ids) for e in episodes))
    seq = torch.full((len(episodes), P + N), pad_id, dtype=torch.long)
    attn, mask = torch.zeros_like(seq), torch.zeros((len(episodes), N))
    for i, e in enumerate(episodes):
        p, n = len(e.prompt_ids), len(e.ids)
        seq[i, P - p:P + n] = torch.tensor(e.prompt_ids + e.ids)
        attn[i, P - p:P + n] = 1
        mask[i, :n] = torch.tensor(e.mask, dtype=torch.float)
    seq, attn = seq.to(device), attn.to(device)
    return seq, attn, position_ids_from_mask(attn), mask.to(device)


def main():
    parser = argparse.ArgumentParser(description="MiniMind agentic RL (multi-turn tool use, GRPO / CISPO)")
    add_common_args(parser, stage="agent", data_path="dataset/agent_rl.jsonl", epochs=1, batch_size=2,
                    learning_rate=3e-7, from_weight="full_sft", save_interval=10, log_interval=1, max_seq_len=None)
    add_rl_args(parser, max_prompt_len=1024, max_gen_len=768, temperature=0.8, kl_beta=0.1, total_clip=3.0,
                reward="answer:1,tool:0.2,calls:0.5,format:0.2,unfinished:0.5,repetition:0.2",
                reward_help="weighted reward terms, e.g. 'answer:1,tool:0.2,calls:0.5,model:0.5'; terms: answer, "
                            "tool, calls, format, unfinished, repetition, model (see the module docstring)",
                # --thinking_ratio with upstream minimind-3's template: upstream's 0.1 (its tool data mostly has
                # empty think blocks); 1.0 with ours (rl_utils.thinking_ratio)
                minimind3_thinking_ratio=0.1)
    parser.add_argument("--num_generations", type=int, default=4, help="episodes per task (G)")
    parser.add_argument("--loss_type", type=str, default="cispo", choices=("grpo", "cispo"))
    add_clip_args(parser, clip_epsilon=0.2)  # --clip_epsilon/--epsilon, --clip_epsilon_high, --epsilon_high
    parser.add_argument("--num_iterations", type=int, default=1, help="optimizer steps per rollout batch")
    parser.add_argument("--max_turns", type=int, default=3, help="assistant turns per episode")
    parser.add_argument("--max_total_len", type=int, default=2500, help="context limit of an episode")
    parser.add_argument("--dynamic_sampling", type=int, default=2,
                        help="rounds of replacing all-equal-reward groups with other tasks (0 = off)")
    parser.add_argument("--debug_mode", action="store_true", help="print one episode at every log")
    args = parser.parse_args()
    reward_terms = check_rl_args(parser, args, AGENT_REWARDS)
    G = args.num_generations
    if G < 2:
        parser.error("--num_generations must be >= 2: GRPO's baseline is the mean of a task's group")
    if args.num_iterations < 1 or args.max_turns < 1 or args.dynamic_sampling < 0:
        parser.error("--num_iterations and --max_turns must be >= 1, --dynamic_sampling >= 0")
    if args.accumulation_steps != 1:
        parser.error("--accumulation_steps is not used by agent RL: each rollout batch is one update; "
                     "lower --batch_size or --num_generations to save memory")
    if args.per_sample_seeds:
        parser.error("--per_sample_seeds is for PPO/GRPO/SPO: local agent episodes draw from the step's generator")
    if args.max_total_len <= max(args.max_prompt_len, 1):
        parser.error("--max_total_len must exceed --max_prompt_len: an episode needs room to answer")

    # ---- processes, model, tasks, reward, optimizer
    dist_state = init_distributed(args.device, seed=args.seed)  # one seed on every rank: the same initial weights
    device, config = dist_state.device, model_config_from_args(args)
    tokenizer = load_tokenizer(args.tokenizer_path, vocab_size=config.vocab_size)
    model = init_model(config, args.from_weight, save_dir=args.save_dir, device=device)
    dataset = AgentRLDataset(args.data_path, tokenizer, skip_bad_lines=args.skip_bad_lines)
    # A prompt is never cut (its start holds the tool schemas, its end the task): long ones are left out, and a
    # file where most are too long stops here with the --max_prompt_len that fits.
    check_trainable(dataset, args.max_prompt_len, "--max_prompt_len", verbose=dist_state.is_main)
    dataset = Subset(dataset, [i for i in range(len(dataset))
                               if len(dataset[i]["prompt_ids"]) <= args.max_prompt_len or not args.max_prompt_len])
    if len(dataset) == 0:
        raise DataFormatError(f"{args.data_path}: no task fits --max_prompt_len {args.max_prompt_len}")
    dtype, autocast, scaler = mixed_precision(args.dtype, device)
    think_ratio = thinking_ratio(args, tokenizer)  # share of episodes with the template's thinking switch on
    # The reference: the starting policy, frozen, copied before a resume overwrites the policy's weights.
    ref_model = frozen_copy(model)
    scorer = None
    if any(n == "model" for n, _ in reward_terms):
        scorer = RewardModelScorer.load(args.reward_model_path, device, batch_size=args.reward_batch_size)
    print0("reward = " + " + ".join(f"{w:g}*{n}" for n, w in reward_terms))
    reward_fn = RewardFunction(reward_terms, scorer, reward_clip=args.reward_clip, rules=AGENT_RULES,
                               total_clip=args.reward_total_clip)
    batches = Batches.from_flags(args, dataset, dist_state, collate_fn=collate_lists)
    optimizer = make_optimizer(model.parameters(), args.learning_rate, args.weight_decay, device)

    # ---- the run's files, step range and schedules; resume (--from_resume 1), then compile / DDP, then the log
    run = TrainRun.from_flags(args, config, dist_state, batches, steps_per_batch=args.num_iterations)
    step = run.resume(model, optimizer, scaler, batches)  # 0 unless --from_resume 1 finds a checkpoint
    model = wrap_model(model, dist_state, compile=bool(args.use_compile))
    logger = run.open_logger(step, batches, dtype,
                             info=f"{G} episodes per task, up to {args.max_turns} turns, {args.loss_type}")
    rollouts = make_rollout_engine(args, run.weight_file.stem, dist_state.is_main, print0)  # --rollout_engine
    rollouts.sync(model, step)  # http: the inference server starts from these (possibly resumed) weights

    # ---- the loop: one rollout batch -> --num_iterations optimizer steps
    for [batch] in islice(batches, run.batches_left(step)):
        # 1. rollout: the random stream belongs to (seed, rank, step), so a resumed run plays the same episodes
        gen = step_generator(args.seed, dist_state.rank, step, device)
        tasks = [dict(zip(batch, values)) for values in zip(*batch.values())]
        episodes = rollout(model, tokenizer, tasks, G, gen, args, think_ratio, autocast, rollouts)
        # 2. rewards; then dynamic sampling: flat groups are replaced by groups of other tasks
        rewards, parts, spread = score(reward_fn, episodes, tasks, G)
        zero_std_before = (spread < 1e-6).float().mean()
        for _ in range(args.dynamic_sampling):
            flat = (spread < 1e-6).nonzero().flatten().tolist()
            if not flat:
                break
            new = [dataset[i] for i in torch.randint(len(dataset), (len(flat),), generator=gen, device=gen.device)]
            new_eps = rollout(model, tokenizer, new, G, gen, args, think_ratio, autocast, rollouts)
            new_r, new_parts, new_spread = score(reward_fn, new_eps, new, G)
            for k, g in enumerate(flat):  # swap group g for the new group k
                rows = slice(g * G, (g + 1) * G)
                episodes[rows], tasks[g] = new_eps[k * G:(k + 1) * G], new[k]
                rewards[rows], spread[g] = new_r[k * G:(k + 1) * G], new_spread[k]
                for name in parts:
                    parts[name][rows] = new_parts[name][k * G:(k + 1) * G]
        rewards = rewards.to(device)
        advantages, group_std = group_advantages(rewards, G)
        # 3. the episodes as one padded batch; `mask` keeps the sampled tokens only (tool results are context)
        sequences, attention_mask, position_ids, mask = pack(episodes, tokenizer.pad_token_id, device)
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
        rollouts.sync(model, step)  # --rollout_engine http: the server loads the new weights (local: nothing)
        # 5. log, save (after the whole batch: a resume continues with the next one)
        n_calls = sum(len(e.calls) for e in episodes)
        logger.add(tokens=mask.sum(), loss=loss, **reward_metrics(rewards, parts),
                   accuracy=(parts["answer"] == 1).float().mean() if "answer" in parts else None,
                   tool_calls=n_calls / len(episodes),
                   valid_call_rate=sum(ok for e in episodes for _, ok in e.calls) / max(1, n_calls),
                   turns=sum(len(e.turns) for e in episodes) / len(episodes),
                   response_len=mask.sum() / len(episodes), zero_std_frac_before=zero_std_before,
                   zero_std_frac=(group_std < 1e-6).float().mean(), kl=masked_mean(kl.detach(), mask),
                   clip_frac=masked_mean(clipped.float(), mask))
        logger.log(step, {"lr": lr, "grad_norm": grad_norm}, epoch=batches.current_epoch)
        if args.debug_mode and dist_state.is_main:
            e = episodes[0]
            logger.info(f"episode 0 (gt {tasks[0]['gt']}, reward {float(rewards[0]):.3f}):\n"
                        + tokenizer.decode(e.prompt_ids + e.ids, skip_special_tokens=False))
        run.maybe_save(step, model, optimizer, scaler, batches)
    run.finish(step)


if __name__ == "__main__":
    run_main(main)
