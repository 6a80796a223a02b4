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
           --loss_type cispo instead: -sg(min(ratio, 1 + eps_high)) * A * log pi + beta * k3 (CISPO,
           MiniMax-M1: the importance weight is clipped, never a token's gradient);
        5. aggregate by --loss_type: grpo (per-sequence token mean, then batch mean), dapo and cispo (token sum /
           token count), dr_grpo (token sum / (batch x max_gen_len)); one optimizer step per iteration.
        Prompts are cut to their last --max_prompt_len tokens (alias --max_seq_len, upstream's name).
Output: out/grpo_{hidden}[_moe].pth, checkpoints/grpo_{hidden}[_moe]_resume.pth (weights, optimizer, data
        position), metrics in out/logs/grpo_{hidden}[_moe].jsonl (reward, reward_std, zero_std_frac, kl, ...).
        --max_steps counts optimizer steps (--num_iterations per rollout batch).

    python trainer/train_grpo.py --from_weight full_sft --reward model          # needs ../internlm2-1_8b-reward
    python trainer/train_grpo.py --data_path dataset/gsm8k.jsonl --reward gsm8k:1,format:0.2 --from_weight reason
    python trainer/train_grpo.py --loss_type cispo --epsilon_high 5.0                 # upstream's default loss
    torchrun --nproc_per_node 2 trainer/train_grpo.py
    python trainer/train_grpo.py --from_resume 1                                  # continue an interrupted run
"""
import argparse
import sys
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import check_trainable  # noqa: E402
from model.checkpoint import load_tokenizer  # noqa: E402
from model.config_flags import model_config_from_args  # noqa: E402
from model.errors import run_main  # noqa: E402
from model.runtime import unwrap  # noqa: E402
from trainer.rl_utils import (LOSS_TYPES, RLPromptDataset, add_clip_args, add_rl_args,  # noqa: E402
                              aggregate_loss, build_reward_function, check_rl_args, collate_prompts, expand,
                              group_advantages, kl_k3, make_rollout_engine, masked_mean, policy_loss,
                              reward_metrics, step_generator, thinking_ratio, token_logps)
from trainer.trainer_utils import (Batches, TrainRun, add_common_args, frozen_copy, init_distributed,  # noqa: E402
                                   init_model, make_optimizer, mixed_precision, optimizer_step, print0, set_lr,
                                   wrap_model)


def main():
    parser = argparse.ArgumentParser(description="MiniMind GRPO")
    # max_seq_len=None: add_rl_args makes --max_seq_len an alias of --max_prompt_len (the prompt budget)
    add_common_args(parser, stage="grpo", data_path="dataset/rlaif-mini.jsonl", epochs=1, batch_size=2,
                    learning_rate=8e-8, from_weight="full_sft", save_interval=10, log_interval=1, max_seq_len=None)
    add_rl_args(parser, max_prompt_len=256, max_gen_len=1536, temperature=0.8, reward="model", kl_beta=0.02)
    parser.add_argument("--num_generations", type=int, default=8, help="responses sampled per prompt (G)")
    add_clip_args(parser, clip_epsilon=0.2)  # --clip_epsilon/--epsilon, --clip_epsilon_high, --epsilon_high
    parser.add_argument("--num_iterations", type=int, default=1,
                        help="optimizer steps per rollout batch (mu); > 1 makes the ratio differ from 1")
    parser.add_argument("--loss_type", type=str, default="grpo", choices=LOSS_TYPES)
    args = parser.parse_args()
    reward_terms = check_rl_args(parser, args)
    G = args.num_generations
    if G < 2:
        parser.error("--num_generations must be >= 2: GRPO's baseline is the mean of a prompt's group")
    if args.num_iterations < 1:
        parser.error("--num_iterations must be >= 1")
    if args.accumulation_steps != 1:
        parser.error("--accumulation_steps is not used by GRPO: each rollout batch is one update; "
                     "lower --batch_size or --num_generations to save memory")

    # ---- processes, models, reward, prompts, optimizer
    dist_state = init_distributed(args.device, seed=args.seed)  # one seed on every rank: the same initial weights
    device, config = dist_state.device, model_config_from_args(args)
    tokenizer = load_tokenizer(args.tokenizer_path, vocab_size=config.vocab_size)
    model = init_model(config, args.from_weight, save_dir=args.save_dir, device=device)
    # The reference is the starting policy, copied before a resume overwrites the policy's weights.
    ref_model = frozen_copy(model)
    reward_fn = build_reward_function(reward_terms, device, args.reward_model_path, args.reward_batch_size,
                                      args.length_target, args.reward_clip, print0)
    dataset = RLPromptDataset(args.data_path, tokenizer, args.max_prompt_len, args.skip_bad_lines,
                              thinking_ratio=thinking_ratio(args, tokenizer), seed=args.seed)
    check_trainable(dataset, args.max_prompt_len, "--max_prompt_len", verbose=dist_state.is_main)  # stop: most cut
    batches = Batches.from_flags(args, dataset, dist_state, collate_fn=collate_prompts)
    dtype, autocast, scaler = mixed_precision(args.dtype, device)
    optimizer = make_optimizer(model.parameters(), args.learning_rate, args.weight_decay, device)

    # ---- the run's files, step range and schedules; resume (--from_resume 1), then compile / DDP, then the log
    run = TrainRun.from_flags(args, config, dist_state, batches, steps_per_batch=args.num_iterations)
    step = run.resume(model, optimizer, scaler, batches)  # 0 unless --from_resume 1 finds a checkpoint
    model = wrap_model(model, dist_state, compile=bool(args.use_compile))
    logger = run.open_logger(step, batches, dtype, info=f"{G} generations per prompt, loss {args.loss_type}")
    rollouts = make_rollout_engine(args, run.weight_file.stem, dist_state.is_main, print0)  # --rollout_engine
    rollouts.sync(model, step)  # http: the inference server starts from these (possibly resumed) weights

    # ---- the loop: one rollout batch -> --num_iterations optimizer steps
    for [batch] in islice(batches, run.batches_left(step)):
        # 1. rollout: G responses per prompt (consecutive rows), batched with a KV cache; the random stream belongs
        #    to (seed, rank, step), so an interrupted and resumed run draws the same samples
        gen = step_generator(args.seed, dist_state.rank, step, device)
        ro = rollouts.rollout(model, tokenizer, batch["prompt_ids"], args.max_gen_len, args.temperature, args.top_p,
                              num_generations=G, autocast=autocast, generator=gen)
        # 2. rewards first: a large reward model should not sit in memory next to the policy's activations
        rewards, parts = reward_fn(expand(batch["messages"], G), ro.responses, expand(batch["answer"], G))
        rewards = rewards.to(device)
        # 3. advantage of each response: its reward against its group's, shared by all its tokens
        advantages, group_std = group_advantages(rewards, G, scale_std=args.loss_type != "dr_grpo")
        # 4. log-probs of the frozen reference (for the KL) and, with several iterations, of the sampling policy
        mask = ro.response_mask
        seq = (ro.sequences, ro.attention_mask, ro.position_ids, mask.shape[1], args.temperature)
        with torch.no_grad(), autocast:
            ref_logps = token_logps(ref_model, *seq)
            # With one iteration the sampling policy is the current one: old = current.detach() below.
            old_logps = token_logps(unwrap(model), *seq) if args.num_iterations > 1 else None
        # 5. clipped policy loss + beta * KL, backward, optimizer step; --num_iterations times on this rollout
        for _ in range(min(args.num_iterations, run.last_step - step)):
            lr = set_lr(optimizer, run.lr(step))
            with autocast:
                logps, aux_loss = token_logps(model, *seq, with_aux=True)
            old = logps.detach() if old_logps is None else old_logps
            pg_loss, clipped = policy_loss(args.loss_type, logps, old, advantages, args.clip_epsilon,
                                           args.clip_epsilon_high)
            kl = kl_k3(logps, ref_logps)
            loss = aggregate_loss(pg_loss + args.beta * kl, mask, args.loss_type, args.max_gen_len) + aux_loss
            scaler.scale(loss).backward()
            grad_norm = optimizer_step(optimizer, scaler, args.grad_clip)
            step += 1
        rollouts.sync(model, step)  # --rollout_engine http: the server loads the new weights (local: nothing)
        # 6. log, save (after the whole batch: a resume continues with the next one)
        logger.add(tokens=mask.sum(), loss=loss, **reward_metrics(rewards, parts),
                   zero_std_frac=(group_std < 1e-6).float().mean(), kl=masked_mean(kl.detach(), mask),
                   clip_frac=masked_mean(clipped.float(), mask), response_len=ro.response_lengths.mean())
        logger.log(step, {"lr": lr, "grad_norm": grad_norm}, epoch=batches.current_epoch)
        run.maybe_save(step, model, optimizer, scaler, batches)
    run.finish(step)


if __name__ == "__main__":
    run_main(main)
