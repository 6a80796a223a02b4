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
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import IGNORE_INDEX, SFTDataset  # noqa: E402
from trainer.trainer_utils import (Batch, TrainLoop, add_common_args, cleanup_distributed,  # noqa: E402
                                   padded_dataset, run_main, setup_stage)

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


def make_reason_loss_fn(tag_ids, weight: float, moe: bool = False):
    def loss_fn(model, batch) -> Batch:
        input_ids, labels = batch["input_ids"], batch["labels"]
        out = model(input_ids=input_ids)
        # Position t predicts token t+1: logits[:, :-1] against labels[:, 1:] (and their weights).
        targets = labels[:, 1:]
        ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                             ignore_index=IGNORE_INDEX, reduction="none").view_as(targets)
        w = reason_token_weights(labels, tag_ids, weight)[:, 1:]
        n = (targets != IGNORE_INDEX).sum().clamp(min=1)
        loss = (ce * w).sum() / n
        metrics = {"ce": ce.sum().detach() / n}
        if moe:
            metrics["aux_loss"] = out.aux_loss.detach()
        return Batch(loss=loss + out.aux_loss, n_tokens=batch["attention_mask"].sum(), metrics=metrics)

    return loss_fn


def main():
    parser = argparse.ArgumentParser(description="MiniMind reasoning distillation (R1-style SFT)")
    add_common_args(parser, stage="reason", data_path="dataset/r1_mix_1024.jsonl", epochs=1, batch_size=8,
                    learning_rate=1e-6, max_seq_len=1024, from_weight="dpo")
    parser.add_argument("--special_token_weight", type=float, default=10.0,
                        help="loss weight of positions whose target is <think> </think> <answer> </answer>")
    args = parser.parse_args()

    dist_state, model, tokenizer, log = setup_stage(args)
    tag_ids = tag_token_ids(tokenizer)
    log(f"tag tokens {dict(zip(REASON_TAGS, tag_ids))} weigh {args.special_token_weight:g}")
    train_ds, collate, lengths = padded_dataset(args, tokenizer, SFTDataset)

    loss_fn = make_reason_loss_fn(tag_ids, args.special_token_weight, model.config.use_moe)
    TrainLoop(args, "reason", model, dist_state).run(train_ds, collate, loss_fn, lengths=lengths)
    cleanup_distributed()


if __name__ == "__main__":
    run_main(main)
