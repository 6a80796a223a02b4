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

from dataset.lm_dataset import SFTDataset  # noqa: E402
from trainer.trainer_utils import (Batches, TrainLogger, add_common_args, cleanup_distributed,  # noqa: E402
                                   ddp_sync, dynamic_padding, get_lr, init_distributed, init_model,
                                   load_checkpoint, make_optimizer, mixed_precision, model_config_from_args,
                                   optimizer_step, print0, resume_path, run_main, save_checkpoint, set_lr,
                                   setup_seed, weight_name, weight_path, wrap_model)


def main():
    parser = argparse.ArgumentParser(description="MiniMind full-parameter SFT")
    add_common_args(parser, stage="full_sft", data_path="dataset/sft_mini_512.jsonl", epochs=2, batch_size=16,
                    learning_rate=1e-5, max_seq_len=512, accumulation_steps=1, from_weight="pretrain")
    args = parser.parse_args()

    # ---- processes, model, data, optimizer
    ddp = init_distributed(args.device)
    setup_seed(args.seed)  # before the model is built: every rank starts from the same weights
    config = model_config_from_args(args)
    model, tokenizer = init_model(config, args.from_weight, args.save_dir, args.tokenizer_path, ddp.device, print0)
    dataset = SFTDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)
    # Length-grouped batches (by record size) + dynamic padding: little compute is spent on padding.
    collate, lengths = dynamic_padding(dataset, tokenizer.pad_token_id, args.max_seq_len, args.pad_to_max,
                                       args.group_by_length, args.use_compile)
    batches = Batches(dataset, collate, ddp, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                      accumulation_steps=args.accumulation_steps, lengths=lengths, num_workers=args.num_workers)
    dtype, autocast, scaler = mixed_precision(args.dtype, ddp.device)
    optimizer = make_optimizer(model.parameters(), args.learning_rate, args.weight_decay, ddp.device)

    # ---- outputs, resume
    weight_file = weight_path(args.save_dir, args.save_weight, config)
    resume_file = resume_path(args.checkpoint_dir, args.save_weight, config)
    step, run_id = 0, None
    if args.from_resume:
        step, run_id = load_checkpoint(resume_file, model, optimizer, scaler, batches, ddp.world_size)
    model = wrap_model(model, ddp, compile=bool(args.use_compile))
    total_steps = batches.total_steps
    last_step = min(total_steps, args.max_steps or total_steps)
    logger = TrainLogger(weight_name(args.save_weight, config), args.save_dir, ddp, log_interval=args.log_interval,
                         last_step=last_step, start_step=step, append=bool(args.from_resume), run_id=run_id,
                         config=vars(args), wandb_project=args.wandb_project if args.use_wandb else None,
                         tracker=args.logger)
    logger.info(f"{batches.describe()}, device {ddp.device}, dtype {str(dtype).replace('torch.', '')}")

    # ---- the loop: one optimizer step per group of --accumulation_steps micro-batches
    model.train()
    for group in islice(batches, max(0, last_step - step)):  # islice: stop at --max_steps
        lr = set_lr(optimizer, get_lr(step, total_steps, args.learning_rate, args.min_lr_ratio, args.warmup_steps))
        for i, batch in enumerate(group):
            with ddp_sync(model, sync=i == len(group) - 1):  # DDP: all-reduce the gradients once per group
                with autocast:
                    # No padding mask: padding sits at the end of each row and attention is causal.
                    out = model(input_ids=batch["input_ids"], labels=batch["labels"])
                    loss = out.loss + out.aux_loss  # CE on the assistant tokens + MoE balance loss (0 if dense)
                scaler.scale(loss / len(group)).backward()
            logger.add(tokens=batch["attention_mask"].sum(), loss=loss,
                       aux_loss=out.aux_loss if config.use_moe else None)
        grad_norm = optimizer_step(optimizer, scaler, args.grad_clip)
        step += 1
        logger.log(step, {"lr": lr, "grad_norm": grad_norm}, epoch=batches.current_epoch)
        if step % args.save_interval == 0 or step == last_step:
            save_checkpoint(weight_file, resume_file, model, optimizer, scaler, step, batches, ddp,
                            run_id=logger.run_id, flags=vars(args))

    logger.info(f"done: {step} steps; weights -> {weight_file}")
    logger.close()
    cleanup_distributed()


if __name__ == "__main__":
    run_main(main)
