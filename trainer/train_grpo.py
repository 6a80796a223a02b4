"""RLAIF — GRPO (Group Relative Policy Optimization): reinforcement learning without a critic.

Data:   prompts, JSONL of {"conversations": [..., {"role": "assistant", "content": <placeholder>}]} (upstream:
        rlaif-mini.jsonl) or GSM8K {"question", "answer": "... #### N"} records (for `--reward gsm8k`).
Algorithm, per batch of prompts:
        1. sample G = --num_generations responses per prompt from the current policy (batched, KV cache);
        2. score them (--reward: reward model and/or rules), before any other forward pass;
        3. group-normalised advantage of each response, shared by all its tokens:
               A_i = (R_i - mean(R_group)) / (std(R_group) + eps)        (dr_grpo: no std division)
           a group whose rewards are all equal gives A = 0 (logged as `zero_std_frac`);
        4. per token: max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)) + beta * k3(pi_theta, pi_ref),
           ratio = pi_theta / pi_old (with --num_iterations 1 it is exp(0) = 1, but its gradient is the
           policy gradient), k3 = pi_ref/pi - log(pi_ref/pi) - 1 against the frozen starting model;
        5. aggregate by --loss_type: grpo (per-sequence token mean, then batch mean), dapo (token sum / token
           count), dr_grpo (token sum / (batch x max_gen_len)); one optimizer step per iteration.
Output: out/grpo_{hidden}[_moe].pth, checkpoints/grpo_{hidden}[_moe]_resume.pth (weights, optimizer, data
        position), metrics in out/logs/grpo_{hidden}[_moe].jsonl (reward, reward_std, zero_std_frac, kl, ...).

    python trainer/train_grpo.py --from_weight full_sft --reward model          # needs ../internlm2-1_8b-reward
    python trainer/train_grpo.py --data_path dataset/gsm8k.jsonl --reward gsm8k:1,format:0.2 --from_weight reason
    torchrun --nproc_per_node 2 trainer/train_grpo.py
    python trainer/train_grpo.py --from_resume 1                                  # continue an interrupted run
"""
import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from trainer.rl_utils import (LOSS_TYPES, RLPromptDataset, add_rl_args, aggregate_loss,  # noqa: E402
                              build_reward_function, check_rl_args, clipped_policy_loss, expand,
                              group_advantages, kl_k3, masked_mean, reward_metrics, rollout, run_rl, step_generator,
                              steps_per_epoch, token_logps)
from trainer.trainer_utils import TrainLoop, add_common_args, run_main, setup_stage, unwrap  # noqa: E402


def grpo_update(args, loop, ref_model, tokenizer, reward_fn, batch, total_steps, last_step):
    """One rollout batch -> `--num_iterations` optimizer steps. Returns the metrics to log."""
    G = args.num_generations
    ro = rollout(loop.model, tokenizer, batch["prompt"], args.max_gen_len, args.temperature, args.top_p,
                 args.max_seq_len, num_generations=G, autocast=loop.autocast,
                 generator=step_generator(args.seed, loop.ds.rank, loop.step, loop.device))
    # Rewards first: a large reward model should not sit in memory next to the policy's activations.
    rewards, parts = reward_fn(expand(batch["messages"], G), ro.responses, expand(batch["answer"], G))
    rewards = rewards.to(loop.device)
    advantages, group_std = group_advantages(rewards, G, scale_std=args.loss_type != "dr_grpo")

    mask, n = ro.response_mask, ro.response_mask.shape[1]
    seq = (ro.sequences, ro.attention_mask, ro.position_ids, n, args.temperature)
    with torch.no_grad(), loop.autocast:
        ref_logps = token_logps(ref_model, *seq)
        # With one iteration the sampling policy is the current one: old = current.detach() below.
        old_logps = token_logps(unwrap(loop.model), *seq) if args.num_iterations > 1 else None

    for _ in range(min(args.num_iterations, last_step - loop.step)):
        lr = loop.set_lr(total_steps)
        with loop.autocast:
            logps, aux_loss = token_logps(loop.model, *seq, with_aux=True)
        old = logps.detach() if old_logps is None else old_logps
        pg_loss, clipped = clipped_policy_loss(logps, old, advantages, args.clip_epsilon, args.clip_epsilon_high)
        kl = kl_k3(logps, ref_logps)
        loss = aggregate_loss(pg_loss + args.beta * kl, mask, args.loss_type, args.max_gen_len) + aux_loss
        loop.backward(loss)
        grad_norm = loop.optimizer_step()

    metrics = {"loss": loss.detach(), **reward_metrics(rewards, parts),
               "zero_std_frac": (group_std < 1e-6).float().mean(), "kl": masked_mean(kl.detach(), mask),
               "clip_frac": masked_mean(clipped.float(), mask), "response_len": ro.response_lengths.mean()}
    return metrics, lr, grad_norm, mask.sum()


def main():
    parser = argparse.ArgumentParser(description="MiniMind GRPO")
    add_common_args(parser, stage="grpo", data_path="dataset/rlaif-mini.jsonl", epochs=1, batch_size=2,
                    learning_rate=8e-8, max_seq_len=256, from_weight="full_sft", save_interval=10,
                    log_interval=1)
    add_rl_args(parser, max_gen_len=1536, temperature=0.8, reward="model")
    parser.add_argument("--num_generations", type=int, default=8, help="responses sampled per prompt (G)")
    parser.add_argument("--beta", type=float, default=0.02, help="weight of the k3 KL to the reference model")
    parser.add_argument("--clip_epsilon", type=float, default=0.2, help="ratio clip: [1 - eps, 1 + eps_high]")
    parser.add_argument("--clip_epsilon_high", type=float, default=None,
                        help="upper clip (DAPO's clip-higher, e.g. 0.28); default = --clip_epsilon")
    parser.add_argument("--num_iterations", type=int, default=1,
                        help="optimizer steps per rollout batch (mu); > 1 makes the ratio differ from 1")
    parser.add_argument("--loss_type", type=str, default="grpo", choices=LOSS_TYPES)
    args = parser.parse_args()
    check_rl_args(parser, args)
    if args.num_generations < 2:
        parser.error("--num_generations must be >= 2: GRPO's baseline is the mean of a prompt's group")
    if args.accumulation_steps != 1:
        parser.error("--accumulation_steps is not used by GRPO: each rollout batch is one update; "
                     "lower --batch_size or --num_generations to save memory")

    dist_state, model, tokenizer, log = setup_stage(args)
    # The reference is the starting policy, copied before a resume overwrites the policy's weights.
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    reward_fn = build_reward_function(args, dist_state.device, log)
    dataset = RLPromptDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)

    loop = TrainLoop(args, "grpo", model, dist_state)
    total_steps = steps_per_epoch(len(dataset), args.batch_size, dist_state.world_size) * args.epochs \
        * args.num_iterations

    def update(batch, last_step):
        return grpo_update(args, loop, ref_model, tokenizer, reward_fn, batch, total_steps, last_step)

    run_rl(loop, dataset, update, total_steps,
           describe=f"{len(dataset)} prompts x {args.num_generations} generations, {dist_state.world_size} "
                    f"process(es), {total_steps} optimizer steps (batch {args.batch_size} prompts, "
                    f"loss {args.loss_type}, device {loop.device})")


if __name__ == "__main__":
    run_main(main)
