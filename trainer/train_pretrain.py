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
from model.checkpoint import load_tokenizer  # noqa: E402
from model.config_flags import model_config_from_args  # noqa: E402
from model.errors import run_main  # noqa: E402
from trainer.trainer_utils import (Batches, TrainRun, add_common_args, ddp_sync, init_distributed,  # noqa: E402
                                   init_model, lm_loss, make_optimizer, mixed_precision, optimizer_step, set_lr,
                                   wrap_model)


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
    dist_state = init_distributed(args.device, seed=args.seed)  # one seed on every rank: the same initial weights
    device, config = dist_state.device, model_config_from_args(args)
    if args.doc_attention and args.doc_attention_impl == "flex":
        from model.model_minimind import flex_attention
        if flex_attention is None or not device.startswith("cuda"):
            parser.error("--doc_attention_impl flex needs torch >= 2.5 and a CUDA GPU (PyTorch has no "
                         "flex_attention backward on the CPU); use --doc_attention_impl sdpa")
    tokenizer = load_tokenizer(args.tokenizer_path, vocab_size=config.vocab_size)
    model = init_model(config, args.from_weight, save_dir=args.save_dir, device=device)
    if args.packing:  # every block is --max_seq_len tokens: nothing to pad or group
        dataset = PackedPretrainDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines,
                                        doc_attention=bool(args.doc_attention))
        batches = Batches.from_flags(args, dataset, dist_state, collate_fn=stack_collate)
    else:
        dataset = PretrainDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)
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
                # Next-token CE on every real token + the MoE balance loss (0 if dense). lm_loss passes packed,
                # document-aware blocks their own position ids and block-diagonal mask (see its docstring).
                loss, aux_loss = lm_loss(model, batch, args.doc_attention_impl)
            scaler.scale(loss / len(group)).backward()  # outside autocast, as PyTorch advises
            logger.add(tokens=batch["attention_mask"].sum(), loss=loss,
                       aux_loss=aux_loss if config.use_moe else None)
        grad_norm = optimizer_step(optimizer, scaler, args.grad_clip)
        step += 1
        logger.log(step, {"lr": lr, "grad_norm": grad_norm}, epoch=batches.current_epoch)
        run.maybe_save(step, model, optimizer, scaler, batches)  # every --save_interval steps and at the end
    run.finish(step)


if __name__ == "__main__":
    run_main(main)
