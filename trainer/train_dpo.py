"""Stage 3 — DPO (Direct Preference Optimization): prefer the chosen answer over the rejected one, without a
reward model or sampling.

Data:   JSONL of {"chosen": [turns], "rejected": [turns]} sharing the prompt turns (upstream: dpo.jsonl);
        only the final assistant turn of each side carries labels (DPODataset), and PadCollator stacks a batch
        of B pairs as one batch of 2B rows [chosen; rejected].
Loss:   with log π(y|x) the response log-probability SUMMED over its labelled tokens, for the policy πθ and a
        frozen reference π_ref (a copy of the starting weights),
            h = [log πθ(y_w) − log π_ref(y_w)] − [log πθ(y_l) − log π_ref(y_l)]
            sigmoid (DPO, default):  −log σ(β·h)
            ipo:                     (h − 1/(2β))²
            hinge (SLiC):            relu(1 − β·h)
        plus the MoE balance loss. Logged: chosen/rejected rewards β·(log πθ − log π_ref), reward accuracy
        (chosen reward > rejected reward) and margin (their difference).
Output: out/dpo_{hidden}[_moe].pth, checkpoints/dpo_{hidden}[_moe]_resume.pth.

    python trainer/train_dpo.py --from_weight full_sft
    torchrun --nproc_per_node 2 trainer/train_dpo.py
    python trainer/train_dpo.py --from_resume 1

Defaults follow upstream MiniMind: lr 4e-8 (upstream advises <= 5e-8: larger steps quickly make a small model
forget its SFT skills), batch 4 pairs, max_seq_len 1024, 1 epoch; β = 0.1 (the DPO paper's value; current
upstream uses 0.15). The reference model costs one extra forward (no backward) and one model copy in memory.
"""
import argparse
import sys
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import (IGNORE_INDEX, DPODataset, add_augment_args, augment_kwargs,  # noqa: E402
                                check_trainable)
from model.checkpoint import load_tokenizer  # noqa: E402
from model.config_flags import model_config_from_args  # noqa: E402
from model.errors import run_main  # noqa: E402
from trainer.trainer_utils import (Batches, TrainRun, add_common_args, ddp_sync, frozen_copy,  # noqa: E402
                                   init_distributed, init_model, make_optimizer, mixed_precision, optimizer_step,
                                   set_lr, wrap_model)

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over each row's labelled tokens: (B, T, V), (B, T) -> (B,).

    Position t predicts token t+1, so logits[:, :-1] are scored against labels[:, 1:]; -100 is skipped.
    log_softmax is written as logit − logsumexp so the (B, T, V) log-prob tensor is never materialised.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE_INDEX
    idx = labels.masked_fill(~mask, 0).unsqueeze(-1)
    token_logps = logits.gather(-1, idx).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * mask).sum(-1)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta: float = 0.1, loss_type: str = "sigmoid"):
    """Per-pair preference losses and the implicit rewards β·(log πθ − log π_ref) of each side.

    h is how much more the policy (relative to the reference) prefers the chosen answer:
        h = (log πθ(y_w) − log π_ref(y_w)) − (log πθ(y_l) − log π_ref(y_l))
    sigmoid: −log σ(β h)        the DPO loss (Rafailov et al. 2023): a Bradley-Terry likelihood of the
                                preference under the implicit reward; gradient fades once β h >> 0.
    ipo:     (h − 1/(2β))²      IPO (Azar et al. 2023): regress h to a finite target instead of pushing it to
                                infinity, which resists overfitting deterministic preferences. (The paper and TRL
                                use token-averaged log-probs here; we keep the sums for one consistent h.)
    hinge:   relu(1 − β h)      SLiC-HF (Zhao et al. 2023): zero loss once the margin β h reaches 1.
    """
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def main():
    parser = argparse.ArgumentParser(description="MiniMind DPO")
    add_common_args(parser, stage="dpo", data_path="dataset/dpo.jsonl", epochs=1, batch_size=4,
                    learning_rate=4e-8, max_seq_len=1024, from_weight="full_sft", save_interval=100)
    parser.add_argument("--beta", type=float, default=0.1, help="strength of the pull towards the reference")
    parser.add_argument("--loss_type", type=str, default="sigmoid", choices=LOSS_TYPES)
    add_augment_args(parser)  # upstream minimind-3's SFT augmentations (seeded; dataset/lm_dataset.py)
    args = parser.parse_args()

    # ---- processes, policy + reference, data, optimizer
    dist_state = init_distributed(args.device, seed=args.seed)  # one seed on every rank: the same initial weights
    device, config = dist_state.device, model_config_from_args(args)
    tokenizer = load_tokenizer(args.tokenizer_path, vocab_size=config.vocab_size)
    model = init_model(config, args.from_weight, save_dir=args.save_dir, device=device)
    # π_ref: a frozen copy of the *starting* weights, also on resume (run.resume then loads the trained policy).
    ref_model = frozen_copy(model)
    dataset = DPODataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines,
                         **augment_kwargs(args, tokenizer))  # --drop_empty_think, --add_system_ratio
    check_trainable(dataset, args.max_seq_len, verbose=dist_state.is_main)  # stop if truncation cuts away the responses
    batches = Batches.from_flags(args, dataset, dist_state, pad_id=tokenizer.pad_token_id)
    dtype, autocast, scaler = mixed_precision(args.dtype, device)
    optimizer = make_optimizer(model.parameters(), args.learning_rate, args.weight_decay, device)

    # ---- the run's files, step range and schedules; resume (--from_resume 1), then compile / DDP, then the log
    run = TrainRun.from_flags(args, config, dist_state, batches)
    step = run.resume(model, optimizer, scaler, batches)  # 0 unless --from_resume 1 finds a checkpoint
    model = wrap_model(model, dist_state, compile=bool(args.use_compile))
    logger = run.open_logger(step, batches, dtype)

    # ---- the loop: one optimizer step per group of --accumulation_steps micro-batches
    for group in islice(batches, run.batches_left(step)):  # islice: stop at --max_steps
        lr = set_lr(optimizer, run.lr(step))
        for i, batch in enumerate(group):
            # B pairs as 2B rows [chosen; rejected]. No attention mask: padding sits at the end of each row and
            # attention is causal, so real tokens never see it (and its labels are -100: it never enters a sum).
            input_ids, labels, n = batch["input_ids"], batch["labels"], batch["input_ids"].shape[0] // 2
            # DDP all-reduces the gradients once per group: the last micro-batch's forward decides
            with ddp_sync(model, sync=i == len(group) - 1), autocast:
                with torch.no_grad():
                    ref_logps = sequence_logps(ref_model(input_ids=input_ids).logits, labels)
                out = model(input_ids=input_ids)
                logps = sequence_logps(out.logits, labels)
                losses, chosen_r, rejected_r = dpo_loss(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:],
                                                        args.beta, args.loss_type)
                loss = losses.mean() + out.aux_loss  # + MoE balance loss (0 if dense)
            scaler.scale(loss / len(group)).backward()  # outside autocast, as PyTorch advises
            logger.add(tokens=batch["attention_mask"].sum(), loss=loss, chosen_reward=chosen_r.mean(),
                       rejected_reward=rejected_r.mean(), reward_acc=(chosen_r > rejected_r).float().mean(),
                       margin=(chosen_r - rejected_r).mean(),
                       # with MoE the logged `loss` includes the balance loss: show both parts
                       dpo_loss=losses.mean() if config.use_moe else None,
                       aux_loss=out.aux_loss if config.use_moe else None)
        grad_norm = optimizer_step(optimizer, scaler, args.grad_clip)
        step += 1
        logger.log(step, {"lr": lr, "grad_norm": grad_norm}, epoch=batches.current_epoch)
        run.maybe_save(step, model, optimizer, scaler, batches)  # every --save_interval steps and at the end
    run.finish(step)


if __name__ == "__main__":
    run_main(main)
