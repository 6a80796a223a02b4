"""Reasoning distillation: SFT on R1-style answers so the model learns to think before it answers.

Data:   SFT-format JSONL whose assistant content is `<think>\\n{reasoning}\\n</think>\\n<answer>\\n{answer}\\n</answer>`
        (upstream: r1_mix_1024.jsonl, distilled from DeepSeek-R1), rendered with the ChatML template.
Loss:   next-token cross-entropy on the assistant tokens (as SFT), where a position whose TARGET token is one of
        the tags <think> </think> <answer> </answer> weighs --special_token_weight (10) instead of 1:
            loss = Σ_t w_t · CE_t / (number of labelled tokens)
        Normalising by the token count, not by Σ w_t, is upstream's choice: the ordinary tokens keep exactly
        their SFT gradient and the few tag positions get 10x on top, so the model reliably emits the format
        (a missed tag breaks answer parsing and the format rewards of later RL). The logged `loss` is therefore
        above the plain CE; `ce` (unweighted mean) is logged too for comparison with SFT. Tag ids are looked up
        in the tokenizer (each must be one token). Plus the MoE balance loss.
Output: out/reason_{hidden}[_moe].pth, checkpoints/reason_{hidden}[_moe]_resume.pth.

    python trainer/train_reason.py --from_weight dpo
    torchrun --nproc_per_node 2 trainer/train_reason.py
    python trainer/train_reason.py --from_resume 1

Defaults follow upstream: from the DPO weights, lr 1e-6, batch 8, max_seq_len 1024, 1 epoch.
"""
import argparse
import sys
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import IGNORE_INDEX, SFTDataset, check_trainable  # noqa: E402
from model.checkpoint import load_tokenizer  # noqa: E402
from model.config_flags import model_config_from_args  # noqa: E402
from model.errors import run_main  # noqa: E402
from trainer.trainer_utils import (Batches, TrainRun, add_common_args, ddp_sync, init_distributed,  # noqa: E402
                                   init_model, make_optimizer, mixed_precision, optimizer_step, print0, set_lr,
                                   wrap_model)

REASON_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def tag_token_ids(tokenizer, tags=REASON_TAGS) -> list:
    """The single token id of each tag; an error if the tokenizer splits one (the weighting would miss it)."""
    ids = []
    for tag in tags:
        enc = tokenizer(tag, add_special_tokens=False).input_ids
        if len(enc) != 1:
            raise ValueError(f"tokenizer encodes {tag!r} as {len(enc)} tokens {enc}; reasoning training needs each "
                             f"tag to be a single token (add it to the tokenizer's added tokens)")
        ids.append(enc[0])
    return ids


def reason_token_weights(labels: torch.Tensor, tag_ids, weight: float = 10.0) -> torch.Tensor:
    """Per-position loss weights aligned with `labels`: 0 where unlabelled (-100), `weight` where the label is a
    tag token, 1 elsewhere. Only labelled positions are weighted: a tag quoted in a user turn stays 0."""
    labelled = labels != IGNORE_INDEX
    is_tag = torch.isin(labels, torch.as_tensor(list(tag_ids), device=labels.device))
    w = labelled.float()
    return torch.where(labelled & is_tag, torch.full_like(w, weight), w)


def reason_loss(logits, labels, tag_ids, weight: float = 10.0):
    """(loss, ce): loss = Σ_t w_t · CE_t / (number of labelled tokens), ce = the unweighted mean CE.

    logits: (B, T, V); labels: (B, T) with -100 where unlabelled. Position t predicts token t+1: logits[:, :-1]
    against labels[:, 1:] and their weights (`reason_token_weights`).
    """
    targets = labels[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                         reduction="none").view_as(targets)
    w = reason_token_weights(labels, tag_ids, weight)[:, 1:]
    n = (targets != IGNORE_INDEX).sum().clamp(min=1)
    return (ce * w).sum() / n, ce.sum() / n


def main():
    parser = argparse.ArgumentParser(description="MiniMind reasoning distillation (R1-style SFT)")
    add_common_args(parser, stage="reason", data_path="dataset/r1_mix_1024.jsonl", epochs=1, batch_size=8,
                    learning_rate=1e-6, max_seq_len=1024, from_weight="dpo")
    parser.add_argument("--special_token_weight", type=float, default=10.0,
                        help="loss weight of positions whose target is <think> </think> <answer> </answer>")
    args = parser.parse_args()

    # ---- processes, model, data, optimizer
    dist_state = init_distributed(args.device, seed=args.seed)  # one seed on every rank: the same initial weights
    device, config = dist_state.device, model_config_from_args(args)
    tokenizer = load_tokenizer(args.tokenizer_path, vocab_size=config.vocab_size)
    model = init_model(config, args.from_weight, save_dir=args.save_dir, device=device)
    tag_ids = tag_token_ids(tokenizer)
    print0(f"tag tokens {dict(zip(REASON_TAGS, tag_ids))} weigh {args.special_token_weight:g}")
    dataset = SFTDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)
    check_trainable(dataset, args.max_seq_len, verbose=dist_state.is_main)  # stop if truncation leaves nothing to learn
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
            # DDP all-reduces the gradients once per group: the last micro-batch's forward decides
            with ddp_sync(model, sync=i == len(group) - 1), autocast:
                out = model(input_ids=batch["input_ids"])
                loss, ce = reason_loss(out.logits, batch["labels"], tag_ids, args.special_token_weight)
                loss = loss + out.aux_loss  # + MoE balance loss (0 if dense)
            scaler.scale(loss / len(group)).backward()  # outside autocast, as PyTorch advises
            logger.add(tokens=batch["attention_mask"].sum(), loss=loss, ce=ce,
                       aux_loss=out.aux_loss if config.use_moe else None)
        grad_norm = optimizer_step(optimizer, scaler, args.grad_clip)
        step += 1
        logger.log(step, {"lr": lr, "grad_norm": grad_norm}, epoch=batches.current_epoch)
        run.maybe_save(step, model, optimizer, scaler, batches)  # every --save_interval steps and at the end
    run.finish(step)


if __name__ == "__main__":
    run_main(main)
