"""Stage 1 — pretraining: teach a randomly initialised MiniMind to continue text.

Data:   JSONL of {"text": ...} (upstream: pretrain_hq.jsonl), each document wrapped as <|im_start|> text <|im_end|>.
Loss:   next-token cross-entropy on every real token (padding is -100), plus the MoE balance loss if --use_moe.
Output: out/pretrain_{hidden}[_moe].pth (fp16 weights), checkpoints/pretrain_{hidden}[_moe]_resume.pth.

    python trainer/train_pretrain.py                                    # one GPU / CPU
    torchrun --nproc_per_node 2 trainer/train_pretrain.py               # DDP
    python trainer/train_pretrain.py --from_resume 1                    # continue after an interruption

Data pipeline: the JSONL is tokenized once into a uint16 memmap cache (.cache/tokens/, keyed by the file's
and the tokenizer's hashes) and cut into packed blocks of --max_seq_len tokens: no padding at all, and
memory stays flat however big the corpus is. `--doc_attention 1` also stops documents in one block from
attending to each other (positions restart at each document; the block-diagonal causal mask runs as a
flex_attention BlockMask on CUDA, as a boolean SDPA mask elsewhere: `--doc_attention_impl`). Plain causal
packing stays the default: on a CPU both run at the same speed (26M, seq 512: within noise), the flex path has
not been measured on a GPU yet, and cross-document attention within a block is what most packed pretraining
does. `--packing 0` trains one document per row with dynamic padding, and `--packing 0 --pad_to_max`
reproduces the original MiniMind (every row padded to --max_seq_len) for comparison.
"""
import argparse
import sys
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import PackedPretrainDataset, PretrainDataset, stack_collate  # noqa: E402
from trainer.trainer_utils import (Batches, TrainLogger, add_common_args, cleanup_distributed,  # noqa: E402
                                   ddp_sync, dynamic_padding, get_lr, init_distributed, init_model,
                                   lm_loss, load_checkpoint, make_optimizer, mixed_precision, model_config_from_args,
                                   optimizer_step, print0, resume_path, run_main, save_checkpoint, set_lr,
                                   setup_seed, weight_name, weight_path, wrap_model)


def main():
    parser = argparse.ArgumentParser(description="MiniMind pretraining")
    add_common_args(parser, stage="pretrain", data_path="dataset/pretrain_hq.jsonl", epochs=1, batch_size=32,
                    learning_rate=5e-4, max_seq_len=512, accumulation_steps=8, from_weight="none")
    parser.add_argument("--packing", type=int, default=1, choices=[0, 1],
                        help="1: packed blocks from the token cache; 0: one document per row")
    parser.add_argument("--doc_attention", type=int, default=0, choices=[0, 1],
                        help="with packing: reset positions and block attention at document boundaries")
    parser.add_argument("--doc_attention_impl", type=str, default="auto", choices=["auto", "sdpa", "flex"],
                        help="document mask kernel: auto = flex_attention on CUDA, SDPA + boolean mask elsewhere")
    args = parser.parse_args()

    # ---- processes, model, data, optimizer
    ddp = init_distributed(args.device)
    if args.doc_attention and args.doc_attention_impl == "flex":
        from model.model_minimind import flex_attention
        if flex_attention is None or not ddp.device.startswith("cuda"):
            parser.error("--doc_attention_impl flex needs torch >= 2.5 and a CUDA GPU (PyTorch has no "
                         "flex_attention backward on the CPU); use --doc_attention_impl sdpa")
    setup_seed(args.seed)  # before the model is built: every rank starts from the same weights
    config = model_config_from_args(args)
    model, tokenizer = init_model(config, args.from_weight, args.save_dir, args.tokenizer_path, ddp.device, print0)
    if args.packing:
        dataset = PackedPretrainDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines,
                                        doc_attention=bool(args.doc_attention))
        collate, lengths = stack_collate, None  # every block is --max_seq_len tokens: nothing to pad or group
    else:
        dataset = PretrainDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)
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
                    # Next-token CE on every real token + the MoE balance loss (0 if dense). lm_loss passes packed,
                    # document-aware blocks their own position ids and block-diagonal mask (see its docstring).
                    loss, aux_loss = lm_loss(model, batch, args.doc_attention_impl)
                scaler.scale(loss / len(group)).backward()
            logger.add(tokens=batch["attention_mask"].sum(), loss=loss,
                       aux_loss=aux_loss if config.use_moe else None)
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
