"""RLAIF — SPO (Single-stream Policy Optimization, Xu & Ding 2025, arXiv 2509.13232): one sample per prompt,
a persistent per-prompt baseline instead of GRPO's groups, advantages normalised over the whole batch.

Data:   prompts, as for GRPO: {"conversations": [...]} (upstream rlaif-mini.jsonl) or GSM8K {"question",
        "answer"} records (for `--reward gsm8k`).
Algorithm, per batch of prompts x (one response each):
        1. sample one response per prompt; score it (--reward) before any other forward pass;
        2. baseline B(x) = v(x), the prompt's value tracker (below), read BEFORE this sample updates it;
        3. A = R - B(x), then A <- (A - mean(A)) / (std(A) + eps) over the whole (all-rank) batch;
        4. per token: max(-A * ratio, -A * clip(ratio, 1 +- eps)) + beta * k3(pi_theta, pi_ref) (ratio = exp(0)
           here: one update per rollout), token mean per sequence, then batch mean; one optimizer step;
        5. update the trackers of this batch's prompts with their rewards; measure how far the step moved
           the policy (drift, below).
Value tracker (paper, Sec. 3): for a binary reward the tracker is a Beta(alpha, beta) posterior over the
        prompt's success rate with mean v = alpha / (alpha + beta). A new reward r updates it as
            alpha <- rho * alpha + r,        beta <- rho * beta + (1 - r),
        where rho(x) = clip(2 ** (-D(x) / D_half), rho_min, rho_max) forgets old evidence faster the further
        the policy moved since the prompt's last visit, D(x) = KL(pi_then || pi_now). We store the equivalent
        (S = alpha, W = alpha + beta), i.e. v = S / W with S <- rho S + r, W <- rho W + 1: the same update,
        and a discounted mean that stays meaningful for non-binary rewards (reward model, shaping terms).
        D(x) is measured, not guessed: after each optimizer step we estimate the per-token KL between the
        policy before and after the step on that step's own rollout tokens (k3, one extra no-grad forward),
        add it to a global "drift clock", and D(x) = clock now - clock at x's last visit.
        An unseen prompt starts at a prior with weight n0 = 1 / (1 - rho_min) (as upstream MiniMind): the
        paper estimates it offline from several samples of the initial policy; we use the running
        (rho_max-discounted) mean reward of all earlier batches, or this batch's mean on the very first one.
        Defaults D_half = 0.06, rho in [0.5, 0.96] are upstream MiniMind's. `--spo_rho_mode constant` uses a
        fixed rho. The paper's prioritised prompt sampling is not implemented (prompts come in the usual
        shuffled, resumable order).
        The tracker is a small module of buffers saved in the resume checkpoint.
        Prompts are cut to their last --max_prompt_len tokens (alias --max_seq_len, upstream's name).
Output: out/spo_{hidden}[_moe].pth, checkpoints/spo_{hidden}[_moe]_resume.pth (weights, optimizer, tracker,
        data position), metrics in out/logs/spo_{hidden}[_moe].jsonl (reward, baseline, rho, drift, kl, ...).

    python trainer/train_spo.py --from_weight full_sft --reward model          # needs ../internlm2-1_8b-reward
    python trainer/train_spo.py --data_path dataset/gsm8k.jsonl --reward gsm8k:1,format:0.2 --from_weight reason
    torchrun --nproc_per_node 2 trainer/train_spo.py
    python trainer/train_spo.py --from_resume 1
"""
import argparse
import sys
from itertools import islice
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import check_trainable  # noqa: E402
from model.checkpoint import load_tokenizer  # noqa: E402
from model.config_flags import model_config_from_args  # noqa: E402
from model.errors import run_main  # noqa: E402
from model.runtime import unwrap  # noqa: E402
from trainer.rl_utils import (RLPromptDataset, add_rl_args, aggregate_loss, all_gather_cat,  # noqa: E402
                              build_reward_function, check_rl_args, clipped_policy_loss, collate_prompts, kl_k3,
                              make_rollout_engine, masked_mean, reward_metrics, step_generator, thinking_ratio,
                              token_logps)
from trainer.trainer_utils import (Batches, TrainRun, add_common_args, frozen_copy, init_distributed,  # noqa: E402
                                   init_model, make_optimizer, mixed_precision, optimizer_step, print0, set_lr,
                                   wrap_model)


class SPOValueTracker(nn.Module):
    """Per-prompt KL-adaptive baselines; all state lives in buffers so it is saved and resumed with the run.

    S[i], W[i]   discounted reward sum and discounted count of prompt i (alpha = S, beta = W - S)
    last[i]      drift clock at prompt i's last update;  seen[i] whether it has one
    clock        cumulative policy drift (sum of per-step KL estimates)
    prior_S/W    discounted sum / count of all rewards so far: the starting value of unseen prompts
    """

    def __init__(self, n_prompts: int, rho_min: float = 0.5, rho_max: float = 0.96, d_half: float = 0.06,
                 rho_mode: str = "kl", rho_const: float = 0.9):
        super().__init__()
        assert 0 < rho_min <= rho_max <= 1, f"need 0 < rho_min <= rho_max <= 1, got {rho_min}, {rho_max}"
        assert rho_mode in ("kl", "constant"), f"unknown rho_mode {rho_mode!r}"
        self.rho_min, self.rho_max, self.d_half = rho_min, rho_max, d_half
        self.rho_mode, self.rho_const = rho_mode, rho_const
        self.n0 = 1.0 / (1.0 - rho_min) if rho_min < 1 else 1.0  # the prior's weight in pseudo-samples
        f64 = torch.float64
        self.register_buffer("S", torch.zeros(n_prompts, dtype=f64))
        self.register_buffer("W", torch.zeros(n_prompts, dtype=f64))
        self.register_buffer("last", torch.zeros(n_prompts, dtype=f64))
        self.register_buffer("seen", torch.zeros(n_prompts, dtype=torch.bool))
        self.register_buffer("clock", torch.zeros((), dtype=f64))
        self.register_buffer("prior_S", torch.zeros((), dtype=f64))
        self.register_buffer("prior_W", torch.zeros((), dtype=f64))

    def prior(self, fallback: float) -> float:
        return float(self.prior_S / self.prior_W) if float(self.prior_W) > 0 else fallback

    def baselines(self, idx: torch.Tensor, fallback: float = 0.0) -> torch.Tensor:
        """v(x) for each prompt index (the prior for prompts never seen). float32, on CPU."""
        idx = idx.cpu()
        v = torch.where(self.seen[idx], self.S[idx] / self.W[idx].clamp(min=1e-12),
                        torch.full(idx.shape, self.prior(fallback), dtype=torch.float64))
        return v.float()

    def rho(self, idx: torch.Tensor) -> torch.Tensor:
        """Discount of each prompt's old evidence: 2^(-D/D_half) clipped, D = drift since its last visit."""
        idx = idx.cpu()
        if self.rho_mode == "constant":
            return torch.full(idx.shape, self.rho_const, dtype=torch.float64)
        drift = torch.where(self.seen[idx], self.clock - self.last[idx], torch.zeros((), dtype=torch.float64))
        return torch.pow(2.0, -drift.clamp(min=0) / self.d_half).clamp(self.rho_min, self.rho_max)

    @torch.no_grad()
    def update(self, idx: torch.Tensor, rewards: torch.Tensor, fallback: float = 0.0) -> torch.Tensor:
        """Fold one reward per prompt into its tracker (in order, so a prompt seen twice updates twice);
        then fold the batch into the prior. Returns the rho used for each entry."""
        idx, rewards = idx.cpu(), rewards.detach().double().cpu()
        prior = self.prior(fallback)
        rhos = torch.empty(len(idx), dtype=torch.float64)
        for j, (i, r) in enumerate(zip(idx.tolist(), rewards.tolist())):
            if not bool(self.seen[i]):  # start from the prior, as if last updated now
                self.S[i], self.W[i] = self.n0 * prior, self.n0
                self.last[i], self.seen[i] = self.clock, True
            rho = float(self.rho(torch.tensor([i]))[0])
            self.S[i] = rho * self.S[i] + r
            self.W[i] = rho * self.W[i] + 1.0
            self.last[i] = self.clock
            rhos[j] = rho
        self.prior_S.mul_(self.rho_max).add_(rewards.sum())
        self.prior_W.mul_(self.rho_max).add_(float(len(rewards)))
        return rhos

    def advance_clock(self, drift: float):
        self.clock += max(0.0, float(drift))


def main():
    parser = argparse.ArgumentParser(description="MiniMind SPO (Single-stream Policy Optimization)")
    # max_seq_len=None: add_rl_args makes --max_seq_len an alias of --max_prompt_len (the prompt budget)
    add_common_args(parser, stage="spo", data_path="dataset/rlaif-mini.jsonl", epochs=1, batch_size=2,
                    learning_rate=1e-7, from_weight="full_sft", save_interval=10, log_interval=1, max_seq_len=None)
    add_rl_args(parser, max_prompt_len=256, max_gen_len=1536, temperature=0.8, reward="model", kl_beta=0.02)
    parser.add_argument("--clip_epsilon", type=float, default=0.2, help="ratio clip (inactive at ratio 1)")
    parser.add_argument("--spo_rho_mode", type=str, default="kl", choices=["kl", "constant"],
                        help="kl: rho from the measured policy drift; constant: --spo_rho")
    parser.add_argument("--spo_rho", type=float, default=0.9, help="rho for --spo_rho_mode constant")
    parser.add_argument("--spo_rho_min", type=float, default=0.5)
    parser.add_argument("--spo_rho_max", type=float, default=0.96)
    parser.add_argument("--spo_d_half", type=float, default=0.06,
                        help="drift (per-token KL) at which old evidence keeps half its weight")
    args = parser.parse_args()
    reward_terms = check_rl_args(parser, args)
    if not 0 < args.spo_rho_min <= args.spo_rho_max <= 1:
        parser.error("need 0 < --spo_rho_min <= --spo_rho_max <= 1")
    if args.accumulation_steps != 1:
        parser.error("--accumulation_steps is not used by SPO: each rollout batch is one update")

    # ---- processes, models, reward, prompts, value tracker, optimizer
    dist_state = init_distributed(args.device, seed=args.seed)  # one seed on every rank: the same initial weights
    device, config = dist_state.device, model_config_from_args(args)
    tokenizer = load_tokenizer(args.tokenizer_path, vocab_size=config.vocab_size)
    model = init_model(config, args.from_weight, save_dir=args.save_dir, device=device)
    ref_model = frozen_copy(model)  # the starting policy, before any resume
    reward_fn = build_reward_function(reward_terms, device, args.reward_model_path, args.reward_batch_size,
                                      args.length_target, args.reward_clip, print0)
    dataset = RLPromptDataset(args.data_path, tokenizer, args.max_prompt_len, args.skip_bad_lines,
                              thinking_ratio=thinking_ratio(args, tokenizer), seed=args.seed)
    check_trainable(dataset, args.max_prompt_len, "--max_prompt_len", verbose=dist_state.is_main)  # stop: most cut
    batches = Batches.from_flags(args, dataset, dist_state, collate_fn=collate_prompts)
    tracker = SPOValueTracker(len(dataset), args.spo_rho_min, args.spo_rho_max, args.spo_d_half,
                              args.spo_rho_mode, args.spo_rho)
    dtype, autocast, scaler = mixed_precision(args.dtype, device)
    optimizer = make_optimizer(model.parameters(), args.learning_rate, args.weight_decay, device)

    # ---- the run's files, step range and schedules; resume (--from_resume 1), then compile / DDP, then the log
    run = TrainRun.from_flags(args, config, dist_state, batches)
    step = run.resume(model, optimizer, scaler, batches, extra={"spo_tracker": tracker})  # the tracker too
    model = wrap_model(model, dist_state, compile=bool(args.use_compile))
    logger = run.open_logger(step, batches, dtype, info=f"rho {args.spo_rho_mode}")
    rollouts = make_rollout_engine(args, run.weight_file.stem, dist_state.is_main, print0)  # --rollout_engine
    rollouts.sync(model, step)  # http: the inference server starts from these (possibly resumed) weights

    # ---- the loop: one rollout batch (one response per prompt) -> one optimizer step
    for [batch] in islice(batches, run.batches_left(step)):
        # 1. rollout: one response per prompt, batched with a KV cache, from the (seed, rank, step) random stream
        gen = step_generator(args.seed, dist_state.rank, step, device)
        ro = rollouts.rollout(model, tokenizer, batch["prompt_ids"], args.max_gen_len, args.temperature, args.top_p,
                              num_generations=1, autocast=autocast, generator=gen)
        # 2. rewards
        rewards, parts = reward_fn(batch["messages"], ro.responses, batch["answer"])
        # 3. advantage: reward minus the prompt's tracked baseline, normalised over the whole batch. Baselines and
        #    normalisation use every rank's prompts, so all ranks agree on the tracker.
        all_idx, all_rewards = all_gather_cat(batch["index"]), all_gather_cat(rewards.to(device))
        fallback = float(all_rewards.mean())
        baselines = tracker.baselines(all_idx, fallback).to(device)
        adv_all = all_rewards - baselines
        adv_all = (adv_all - adv_all.mean()) / (adv_all.std() + 1e-6) if adv_all.numel() > 1 else adv_all * 0
        mine = slice(dist_state.rank * len(rewards), (dist_state.rank + 1) * len(rewards))
        advantages = adv_all[mine]
        rhos = tracker.update(all_idx, all_rewards, fallback)
        # 4. loss: clipped policy term (ratio 1: one update per rollout) + beta * k3 KL to the reference
        mask = ro.response_mask
        seq = (ro.sequences, ro.attention_mask, ro.position_ids, mask.shape[1], args.temperature)
        with torch.no_grad(), autocast:
            ref_logps = token_logps(ref_model, *seq)
        lr = set_lr(optimizer, run.lr(step))
        with autocast:
            logps, aux_loss = token_logps(model, *seq, with_aux=True)
        old_logps = logps.detach()
        pg_loss, _ = clipped_policy_loss(logps, old_logps, advantages, args.clip_epsilon)
        kl = kl_k3(logps, ref_logps)
        loss = aggregate_loss(pg_loss + args.beta * kl, mask, "grpo") + aux_loss
        # 5. backward, optimizer step
        scaler.scale(loss).backward()
        grad_norm = optimizer_step(optimizer, scaler, args.grad_clip)
        step += 1
        rollouts.sync(model, step)  # --rollout_engine http: the server loads the new weights (local: nothing)
        # 6. how far the step moved the policy: KL(pi_before || pi_after) on this step's tokens (k3, y ~ pi_before),
        #    averaged over ranks; it advances the tracker's drift clock
        drift = torch.zeros((), device=device)
        if tracker.rho_mode == "kl":
            with torch.no_grad(), autocast:
                new_logps = token_logps(unwrap(model), *seq)
            drift = all_gather_cat(masked_mean(kl_k3(old_logps, new_logps), mask).reshape(1)).mean()
            tracker.advance_clock(float(drift))
        # 7. log, save
        logger.add(tokens=mask.sum(), loss=loss, **reward_metrics(rewards, parts),
                   baseline=baselines[mine].mean(), rho=rhos.float().mean(), drift=drift,
                   kl=masked_mean(kl.detach(), mask), response_len=ro.response_lengths.mean())
        logger.log(step, {"lr": lr, "grad_norm": grad_norm}, epoch=batches.current_epoch)
        run.maybe_save(step, model, optimizer, scaler, batches, extra={"spo_tracker": tracker})
    run.finish(step)


if __name__ == "__main__":
    run_main(main)
