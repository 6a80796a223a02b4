"""RLAIF — PPO (Proximal Policy Optimization) with a learned critic, a frozen reference and a reward signal.

Data:   prompts, JSONL of {"conversations": [...]} (upstream: rlaif-mini.jsonl) or GSM8K {"question",
        "answer"} records (for `--reward gsm8k`).
Models: actor (the policy, from --from_weight), critic (`CriticModel`: the same MiniMind trunk initialised from
        the same weights + a scalar value head), reference (a frozen copy of the starting actor).
Algorithm, per batch of prompts:
        1. sample one response per prompt from the actor; score it (--reward) before any other forward pass;
        2. no-grad: the actor's log-probs (pi_old), the reference's, the critic's values V_t for the state
           before each response token;
        3. per-token reward r_t = -kl_coef * KL_t (k1 or k3 estimate of KL(pi_old || pi_ref)), plus the
           sequence reward R at the last response token (EOS, or the last token when cut at --max_gen_len);
        4. GAE (--gamma, --lam): delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1};
           returns = A + V; advantages whitened over the batch's response tokens;
        5. --ppo_epochs passes over the batch (optionally in --mini_batch_size chunks), each an optimizer step:
           actor:  max(-A ratio, -A clip(ratio, 1 +- clip_epsilon)), ratio = pi_theta / pi_old, token mean;
           critic: vf_coef * 0.5 max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, +-value_clip).
        Actor and critic have separate optimizers (own learning rate, gradient clipping, loss scale, checkpoint),
        so the critic's large early gradients never clip the actor's.
        Prompts are cut to their last --max_prompt_len tokens (alias --max_seq_len, upstream's name).
Output: out/ppo_actor_{hidden}[_moe].pth and out/ppo_critic_{hidden}[_moe].pth; resume state in
        checkpoints/ppo_actor_*_resume.pth and checkpoints/ppo_critic_*_resume.pth; metrics in
        out/logs/ppo_actor_{hidden}[_moe].jsonl. --max_steps counts optimizer steps (ppo_epochs x mini-batches
        per rollout batch); a run that stops inside a batch's updates resumes with the next batch.

    python trainer/train_ppo.py --from_weight full_sft --reward model          # needs ../internlm2-1_8b-reward
    python trainer/train_ppo.py --data_path dataset/gsm8k.jsonl --reward gsm8k:1,format:0.2
    torchrun --nproc_per_node 2 trainer/train_ppo.py
    python trainer/train_ppo.py --from_resume 1
"""
import argparse
import math
import sys
from itertools import islice
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import check_trainable  # noqa: E402
from model.checkpoint import WeightLoadError, load_tokenizer  # noqa: E402
from model.config_flags import model_config_from_args  # noqa: E402
from model.errors import run_main  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindModel  # noqa: E402
from model.runtime import unwrap  # noqa: E402
from trainer.rl_utils import (KL_ESTIMATORS, RLPromptDataset, add_rl_args, build_reward_function,  # noqa: E402
                              check_rl_args, clipped_policy_loss, clipped_value_loss, collate_prompts, gae,
                              make_rollout_engine, masked_mean, masked_whiten, reward_metrics, step_generator,
                              thinking_ratio, token_logps)
from trainer.trainer_utils import (Batches, TrainRun, add_common_args, frozen_copy, grad_scaler,  # noqa: E402
                                   init_distributed, init_model, make_optimizer, mixed_precision, optimizer_step,
                                   print0, set_lr, wrap_model)


class CriticModel(nn.Module):
    """V(s): the MiniMind trunk followed by Linear(hidden, 1) on every position's final hidden state."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.model = MiniMindModel(config)
        self.value_head = nn.Linear(config.hidden_size, 1)
        # Zero init: the first values are 0 (no arbitrary baseline), and the trunk's features are untouched.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_policy(cls, policy) -> "CriticModel":
        """A critic whose trunk starts from the policy's weights (the LM head is dropped)."""
        critic = cls(policy.config)
        trunk = {k[len("model."):]: v for k, v in policy.state_dict().items() if k.startswith("model.")}
        critic.model.load_state_dict(trunk, strict=True)
        return critic.to(next(policy.parameters()).device)

    def forward(self, input_ids, attention_mask=None, position_ids=None, values_to_keep: int = 0):
        """Values (B, T), or (B, values_to_keep) of the last positions."""
        hidden, _, _ = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        if values_to_keep:
            hidden = hidden[:, -values_to_keep:]
        return self.value_head(hidden).squeeze(-1).float()


def response_values(critic, sequences, attention_mask, position_ids, n_response: int):
    """V of the state before each response token, i.e. at positions P-1 .. P+N-2 -> (B, N) (the positions whose
    logits predict the response tokens)."""
    mask = attention_mask if bool((attention_mask == 0).any()) else None
    return critic(sequences, mask, position_ids, values_to_keep=n_response + 1)[:, :-1]


def main():
    parser = argparse.ArgumentParser(description="MiniMind PPO")
    # max_seq_len=None: add_rl_args makes --max_seq_len an alias of --max_prompt_len (the prompt budget)
    add_common_args(parser, stage="ppo_actor", data_path="dataset/rlaif-mini.jsonl", epochs=1, batch_size=2,
                    learning_rate=8e-8, from_weight="full_sft", save_interval=10, log_interval=1, max_seq_len=None)
    add_rl_args(parser, max_prompt_len=256, max_gen_len=1536, temperature=0.8, reward="model")
    parser.add_argument("--critic_learning_rate", type=float, default=8e-8)
    parser.add_argument("--critic_save_weight", type=str, default="ppo_critic",
                        help="prefix of the critic's weight / resume files")
    parser.add_argument("--kl_coef", type=float, default=0.02, help="per-token KL penalty in the reward")
    parser.add_argument("--kl_estimator", type=str, default="k1", choices=sorted(KL_ESTIMATORS))
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--lam", type=float, default=0.95)
    parser.add_argument("--clip_epsilon", type=float, default=0.2, help="policy ratio clip")
    parser.add_argument("--value_clip", type=float, default=0.2, help="value clip around the rollout's values")
    parser.add_argument("--vf_coef", type=float, default=0.5, help="value-loss weight")
    parser.add_argument("--ppo_epochs", type=int, default=1, help="passes over each rollout batch")
    parser.add_argument("--mini_batch_size", type=int, default=0, help="responses per update (0 = whole batch)")
    parser.add_argument("--whiten_advantages", type=int, default=1, choices=[0, 1])
    args = parser.parse_args()
    reward_terms = check_rl_args(parser, args)
    if args.ppo_epochs < 1:
        parser.error("--ppo_epochs must be >= 1")
    if args.accumulation_steps != 1:
        parser.error("--accumulation_steps is not used by PPO: use --mini_batch_size to split updates")

    # ---- processes, models (actor, critic, reference), reward, prompts
    dist_state = init_distributed(args.device, seed=args.seed)  # one seed on every rank: the same initial weights
    device, config = dist_state.device, model_config_from_args(args)
    tokenizer = load_tokenizer(args.tokenizer_path, vocab_size=config.vocab_size)
    actor = init_model(config, args.from_weight, save_dir=args.save_dir, device=device)
    # Reference and critic start from the base weights, before a resume overwrites the actor.
    ref_model = frozen_copy(actor)
    critic = CriticModel.from_policy(actor)
    reward_fn = build_reward_function(reward_terms, device, args.reward_model_path, args.reward_batch_size,
                                      args.length_target, args.reward_clip, print0)
    dataset = RLPromptDataset(args.data_path, tokenizer, args.max_prompt_len, args.skip_bad_lines,
                              thinking_ratio=thinking_ratio(args, tokenizer), seed=args.seed)
    check_trainable(dataset, args.max_prompt_len, "--max_prompt_len", verbose=dist_state.is_main)  # stop: most cut
    batches = Batches.from_flags(args, dataset, dist_state, collate_fn=collate_prompts)

    # ---- two optimizers, each with its own loss scale (fp16): the critic's gradients are not the actor's
    dtype, autocast, actor_scaler = mixed_precision(args.dtype, device)
    critic_scaler = grad_scaler(dtype, device)
    actor_optimizer = make_optimizer(actor.parameters(), args.learning_rate, args.weight_decay, device)
    critic_optimizer = make_optimizer(critic.parameters(), args.critic_learning_rate, args.weight_decay, device)

    # ---- the run (ppo_epochs x mini-batches optimizer steps per rollout batch); resume both models (--from_resume
    #      1: their checkpoints were written side by side), then compile / DDP each, then the log
    n_mb = math.ceil(args.batch_size / args.mini_batch_size) if args.mini_batch_size else 1
    run = TrainRun.from_flags(args, config, dist_state, batches, steps_per_batch=args.ppo_epochs * n_mb)
    step = run.resume(actor, actor_optimizer, actor_scaler, batches)
    critic_step = run.resume(critic, critic_optimizer, critic_scaler, batches, name=args.critic_save_weight)
    if critic_step != step:
        raise WeightLoadError(f"--from_resume 1: the actor checkpoint ({run.files()[1]}) is at step {step} but the "
                              f"critic's ({run.files(args.critic_save_weight)[1]}) at step {critic_step}; they must "
                              f"come from the same run")
    actor = wrap_model(actor, dist_state, compile=bool(args.use_compile))
    critic = wrap_model(critic, dist_state, compile=bool(args.use_compile))
    logger = run.open_logger(step, batches, dtype, info=f"{args.ppo_epochs} PPO epoch(s) x {n_mb} mini-batch(es)")
    rollouts = make_rollout_engine(args, run.weight_file.stem, dist_state.is_main, print0)  # --rollout_engine
    rollouts.sync(actor, step)  # http: the inference server starts from these (possibly resumed) weights

    # ---- the loop: one rollout batch -> ppo_epochs x mini-batches optimizer steps of actor and critic
    for [batch] in islice(batches, run.batches_left(step)):
        # 1. rollout: one response per prompt, batched with a KV cache, from the (seed, rank, step) random stream
        gen = step_generator(args.seed, dist_state.rank, step, device)
        ro = rollouts.rollout(actor, tokenizer, batch["prompt_ids"], args.max_gen_len, args.temperature, args.top_p,
                              autocast=autocast, generator=gen)
        # 2. rewards, before any other forward pass
        rewards, parts = reward_fn(batch["messages"], ro.responses, batch["answer"])
        rewards = rewards.to(device)
        # 3. no grad: the sampling policy's log-probs (pi_old), the reference's, the critic's values
        mask = ro.response_mask
        seq = (ro.sequences, ro.attention_mask, ro.position_ids, mask.shape[1], args.temperature)
        with torch.no_grad(), autocast:
            old_logps = token_logps(unwrap(actor), *seq)
            ref_logps = token_logps(ref_model, *seq)
            old_values = response_values(unwrap(critic), *seq[:4]) * mask
        # 4. per-token rewards (KL penalty, plus R on the last response token), then GAE advantages and returns
        kl = KL_ESTIMATORS[args.kl_estimator](old_logps, ref_logps) * mask
        token_rewards = -args.kl_coef * kl
        last = (ro.response_lengths.long() - 1).clamp(min=0)  # index of EOS, or of the last token if cut off
        token_rewards[torch.arange(len(last), device=device), last] += rewards
        advantages, returns = gae(token_rewards, old_values, mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        # 5. ppo_epochs passes over the batch in mini-batches (a resumable order), one step of each model apiece
        bsz = ro.sequences.shape[0]
        order = step_generator(args.seed + 1, dist_state.rank, step)
        updates = [idx.to(device) for _ in range(args.ppo_epochs)
                   for idx in torch.randperm(bsz, generator=order).split(args.mini_batch_size or bsz)]
        for idx in updates[:run.last_step - step]:
            lr = set_lr(actor_optimizer, run.lr(step))
            set_lr(critic_optimizer, run.lr(step, args.critic_learning_rate))
            sub = (ro.sequences[idx], ro.attention_mask[idx], ro.position_ids[idx], mask.shape[1], args.temperature)
            m = mask[idx]
            with autocast:
                logps, aux_loss = token_logps(actor, *sub, with_aux=True)
                values = response_values(critic, *sub[:4])
            pg, clipped = clipped_policy_loss(logps, old_logps[idx], advantages[idx], args.clip_epsilon)
            actor_loss = masked_mean(pg, m) + aux_loss
            value_loss = masked_mean(clipped_value_loss(values, old_values[idx], returns[idx], args.value_clip), m)
            actor_scaler.scale(actor_loss).backward()
            critic_scaler.scale(args.vf_coef * value_loss).backward()
            grad_norm = optimizer_step(actor_optimizer, actor_scaler, args.grad_clip)
            critic_grad_norm = optimizer_step(critic_optimizer, critic_scaler, args.grad_clip)
            step += 1
        rollouts.sync(actor, step)  # --rollout_engine http: the server loads the new weights (local: nothing)
        # 6. log, save both models (after the whole batch: a resume continues with the next one)
        logger.add(tokens=mask.sum(), **{
            "loss": actor_loss, "value_loss": value_loss, **reward_metrics(rewards, parts),
            "kl": masked_mean(kl, mask), "value": masked_mean(old_values, mask), "return": masked_mean(returns, mask),
            "clip_frac": masked_mean(clipped.float(), m), "response_len": ro.response_lengths.mean()})
        logger.log(step, {"lr": lr, "grad_norm": grad_norm, "critic_grad_norm": critic_grad_norm},
                   epoch=batches.current_epoch)
        if run.save_due(step):  # every --save_interval steps and at the end
            run.save(step, actor, actor_optimizer, actor_scaler, batches)
            run.save(step, critic, critic_optimizer, critic_scaler, batches, name=args.critic_save_weight)
    run.finish(step)


if __name__ == "__main__":
    run_main(main)
