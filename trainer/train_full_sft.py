"""Stage 2 — supervised fine-tuning (SFT): turn the pretrained model into a chat assistant.

Data:   JSONL of {"conversations": [{"role": "system"|"user"|"assistant"|"tool", "content": ...}, ...],
        "tools": [...]?}, rendered with the tokenizer's ChatML template (upstream: sft_mini_512.jsonl).
Loss:   next-token cross-entropy on the assistant replies only — each assistant turn's content and its
        closing <|im_end|>; system, user and tool turns and the `<|im_start|>assistant\\n` header are context
        (labels -100). See `assistant_mask` in dataset/lm_dataset.py.
Output: out/full_sft_{hidden}[_moe].pth, checkpoints/full_sft_{hidden}[_moe]_resume.pth.

    python trainer/train_full_sft.py --from_weight pretrain
    torchrun --nproc_per_node 2 trainer/train_full_sft.py
"""
import argparse
import sys
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import SFTDataset, add_augment_args, augment_kwargs, check_trainable  # noqa: E402
from model.checkpoint import load_tokenizer  # noqa: E402
from model.config_flags import model_config_from_args  # noqa: E402
from model.errors import run_main  # noqa: E402
from trainer.trainer_utils import (Batches, TrainRun, add_common_args, ddp_sync, init_distributed,  # noqa: E402
                                   init_model, make_optimizer, mixed_precision, optimizer_step, set_lr, wrap_model)


def main():
    parser = argparse.ArgumentParser(description="MiniMind full-parameter SFT")
    add_common_args(parser, stage="full_sft", data_path="dataset/sft_mini_512.jsonl", epochs=2, batch_size=16,
                    learning_rate=1e-5, max_seq_len=512, accumulation_steps=1, from_weight="pretrain")
    add_augment_args(parser)  # upstream minimind-3's SFT augmentations (seeded; dataset/lm_dataset.py)
    args = parser.parse_args()

    # ---- processes, model, data, optimizer
    dist_state = init_distributed(args.device, seed=args.seed)  # one seed on every rank: the same initial weights
    device, config = dist_state.device, model_config_from_args(args)
    tokenizer = load_tokenizer(args.tokenizer_path, vocab_size=config.vocab_size)
    model = init_model(config, args.from_weight, save_dir=args.save_dir, device=device)
    dataset = SFTDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines,
                         **augment_kwargs(args, tokenizer))  # --drop_empty_think, --add_system_ratio
    check_trainable(dataset, args.max_seq_len, verbose=dist_state.is_main)  # stop if truncation leaves nothing to learn
    # Length-grouped batches (by record size) + dynamic padding: little compute is spent on padding.
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
                # No padding mask: padding sits at the end of each row and attention is causal.
                # labelled_only: logits only where the loss looks (the assistant tokens); not under compile
                out = model(input_ids=batch["input_ids"], labels=batch["labels"], labelled_only=not args.use_compile)
                loss = out.loss + out.aux_loss  # CE on the assistant tokens + MoE balance loss (0 if dense)
            scaler.scale(loss / len(group)).backward()  # outside autocast, as PyTorch advises
            logger.add(tokens=batch["attention_mask"].sum(), loss=loss,
                       aux_loss=out.aux_loss if config.use_moe else None)
        grad_norm = optimizer_step(optimizer, scaler, args.grad_clip)
        step += 1
        logger.log(step, {"lr": lr, "grad_norm": grad_norm}, epoch=batches.current_epoch)
        run.maybe_save(step, model, optimizer, scaler, batches)  # every --save_interval steps and at the end
    run.finish(step)


if __name__ == "__main__":
    run_main(main)
