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
        Actor and critic have separate optimizers (two TrainLoops: own LR, clipping, DDP wrapper, checkpoint),
        so the critic's large early gradients never clip the actor's.
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
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from model.model_minimind import MiniMindConfig, MiniMindModel  # noqa: E402
from trainer.rl_utils import (KL_ESTIMATORS, RLPromptDataset, add_rl_args, build_reward_function,  # noqa: E402
                              check_rl_args, clipped_policy_loss, clipped_value_loss, gae, masked_mean,
                              masked_whiten, reward_metrics, rollout, run_rl, step_generator, steps_per_epoch,
                              token_logps)
from trainer.trainer_utils import (TrainLoop, WeightLoadError, add_common_args, run_main,  # noqa: E402
                                   setup_stage, unwrap)


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


def ppo_update(args, actor_loop, critic_loop, ref_model, tokenizer, reward_fn, batch, total_steps, last_step):
    """One rollout batch -> ppo_epochs x mini-batches optimizer steps of actor and critic (fewer if the run
    reaches `last_step` first)."""
    device = actor_loop.device
    ro = rollout(actor_loop.model, tokenizer, batch["prompt"], args.max_gen_len, args.temperature, args.top_p,
                 args.max_seq_len, autocast=actor_loop.autocast,
                 generator=step_generator(args.seed, actor_loop.ds.rank, actor_loop.step, actor_loop.device))
    rewards, parts = reward_fn(batch["messages"], ro.responses, batch["answer"])
    rewards = rewards.to(device)

    mask, n = ro.response_mask, ro.response_mask.shape[1]
    seq = (ro.sequences, ro.attention_mask, ro.position_ids, n, args.temperature)
    with torch.no_grad(), actor_loop.autocast:
        old_logps = token_logps(unwrap(actor_loop.model), *seq)
        ref_logps = token_logps(ref_model, *seq)
        old_values = response_values(unwrap(critic_loop.model), *seq[:4]) * mask
    kl = KL_ESTIMATORS[args.kl_estimator](old_logps, ref_logps) * mask
    token_rewards = -args.kl_coef * kl
    last = (ro.response_lengths.long() - 1).clamp(min=0)  # index of EOS, or of the last token if cut off
    token_rewards[torch.arange(len(last), device=device), last] += rewards
    advantages, returns = gae(token_rewards, old_values, mask, args.gamma, args.lam)
    if args.whiten_advantages:
        advantages = masked_whiten(advantages, mask)

    bsz = ro.sequences.shape[0]
    mb = args.mini_batch_size or bsz
    order = step_generator(args.seed + 1, actor_loop.ds.rank, actor_loop.step)  # resumable mini-batch order
    updates = [idx.to(device) for _ in range(args.ppo_epochs)
               for idx in torch.randperm(bsz, generator=order).split(mb)]
    for idx in updates[:last_step - actor_loop.step]:
        lr = actor_loop.set_lr(total_steps)
        critic_loop.set_lr(total_steps)
        sub = (ro.sequences[idx], ro.attention_mask[idx], ro.position_ids[idx], n, args.temperature)
        m = mask[idx]
        with actor_loop.autocast:
            logps, aux_loss = token_logps(actor_loop.model, *sub, with_aux=True)
            values = response_values(critic_loop.model, *sub[:4])
        pg, clipped = clipped_policy_loss(logps, old_logps[idx], advantages[idx], args.clip_epsilon)
        policy_loss = masked_mean(pg, m) + aux_loss
        value_loss = masked_mean(clipped_value_loss(values, old_values[idx], returns[idx], args.value_clip), m)
        actor_loop.backward(policy_loss)
        critic_loop.backward(args.vf_coef * value_loss)
        grad_norm = actor_loop.optimizer_step()
        critic_grad_norm = critic_loop.optimizer_step()

    metrics = {"loss": policy_loss.detach(), "value_loss": value_loss.detach(), **reward_metrics(rewards, parts),
               "kl": masked_mean(kl, mask), "value": masked_mean(old_values, mask),
               "return": masked_mean(returns, mask), "clip_frac": masked_mean(clipped.float(), m),
               "critic_grad_norm": critic_grad_norm, "response_len": ro.response_lengths.mean()}
    return metrics, lr, grad_norm, mask.sum()


def main():
    parser = argparse.ArgumentParser(description="MiniMind PPO")
    add_common_args(parser, stage="ppo_actor", data_path="dataset/rlaif-mini.jsonl", epochs=1, batch_size=2,
                    learning_rate=8e-8, max_seq_len=256, from_weight="full_sft", save_interval=10, log_interval=1)
    add_rl_args(parser, max_gen_len=1536, temperature=0.8, reward="model")
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
    check_rl_args(parser, args)
    if args.ppo_epochs < 1:
        parser.error("--ppo_epochs must be >= 1")
    if args.accumulation_steps != 1:
        parser.error("--accumulation_steps is not used by PPO: use --mini_batch_size to split updates")

    dist_state, actor, tokenizer, log = setup_stage(args)
    # Reference and critic start from the base weights, before a resume overwrites the actor.
    ref_model = copy.deepcopy(actor).eval().requires_grad_(False)
    critic = CriticModel.from_policy(actor)
    reward_fn = build_reward_function(args, dist_state.device, log)
    dataset = RLPromptDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)

    actor_loop = TrainLoop(args, "ppo_actor", actor, dist_state)
    critic_args = argparse.Namespace(**{**vars(args), "learning_rate": args.critic_learning_rate,
                                        "save_weight": args.critic_save_weight, "use_wandb": False})
    critic_loop = TrainLoop(critic_args, "ppo_critic", critic, dist_state)
    if critic_loop.step != actor_loop.step:
        raise WeightLoadError(f"--from_resume 1: the actor checkpoint ({actor_loop.resume_file}) is at step "
                              f"{actor_loop.step} but the critic's ({critic_loop.resume_file}) at step "
                              f"{critic_loop.step}; they must come from the same run")

    n_mb = -(-args.batch_size // args.mini_batch_size) if args.mini_batch_size else 1
    total_steps = steps_per_epoch(len(dataset), args.batch_size, dist_state.world_size) * args.epochs \
        * args.ppo_epochs * n_mb

    def update(batch, last_step):
        return ppo_update(args, actor_loop, critic_loop, ref_model, tokenizer, reward_fn, batch, total_steps,
                          last_step)

    # The critic steps, saves and checkpoints in lockstep with the actor, whose loop leads (steps, data, logs).
    run_rl(actor_loop, dataset, update, total_steps, companions=(critic_loop,),
           describe=f"{len(dataset)} prompts, {dist_state.world_size} process(es), {total_steps} optimizer steps "
                    f"(batch {args.batch_size}, {args.ppo_epochs} PPO epoch(s) x {n_mb} mini-batch(es), "
                    f"device {actor_loop.device})")


if __name__ == "__main__":
    run_main(main)
