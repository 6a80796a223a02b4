"""LoRA fine-tuning: teach a trained MiniMind a narrow skill (an identity, a domain) by training only small
low-rank adapters next to its frozen weights (model/model_lora.py).

Data:   SFT-format JSONL (upstream: lora_identity.jsonl, lora_medical.jsonl), rendered with the ChatML template.
Loss:   next-token cross-entropy on the assistant replies (exactly as full SFT), plus the MoE balance loss;
        gradients reach only the LoRA matrices A and B (rank --lora_rank, scale --lora_alpha / --lora_rank)
        of the --lora_targets projections (default: every attention and MLP projection, experts included).
Output: only the adapter, out/lora/{lora_name}_{hidden}[_moe].pth (a few hundred KB; keys like
        `model.layers.0.self_attn.q_proj.lora_A.weight`) and its rank / alpha / targets beside it in
        out/lora/{lora_name}_{hidden}[_moe].json; resume state in checkpoints/lora/.
        Use it with `load_lora(model, path)` after `apply_lora(model, rank, alpha, targets)`, or fold it into
        the base weights with `merge_lora(model)`.

    python trainer/train_lora.py --from_weight full_sft --lora_name lora_identity \
        --data_path dataset/lora_identity.jsonl
    torchrun --nproc_per_node 2 trainer/train_lora.py
    python trainer/train_lora.py --from_resume 1          # continue an interrupted run

The output name comes from --lora_name (the common --save_weight flag is replaced by it).
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
from model.model_lora import (DEFAULT_TARGETS, apply_lora, count_parameters, lora_state_dict,  # noqa: E402
                              save_lora_meta)
from model.runtime import unwrap  # noqa: E402
from trainer.trainer_utils import (Batches, TrainRun, add_common_args, ddp_sync, init_distributed,  # noqa: E402
                                   init_model, make_optimizer, mixed_precision, optimizer_step, print0, set_lr,
                                   wrap_model)


def main():
    parser = argparse.ArgumentParser(description="MiniMind LoRA fine-tuning")
    add_common_args(parser, stage="lora", data_path="dataset/lora_identity.jsonl", epochs=10, batch_size=32,
                    learning_rate=1e-4, max_seq_len=512, from_weight="full_sft", log_interval=10)
    parser.add_argument("--lora_name", type=str, default="lora_identity",
                        help="adapter name: writes out/lora/{lora_name}_{hidden}.pth")
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--lora_alpha", type=float, default=16.0, help="update scale = lora_alpha / lora_rank")
    parser.add_argument("--lora_dropout", type=float, default=0.0, help="dropout on the adapter's input")
    parser.add_argument("--lora_targets", type=str, default=",".join(DEFAULT_TARGETS),
                        help="comma-separated projection names (q,k,v,o,gate,up,down or full *_proj names)")
    add_augment_args(parser)  # upstream minimind-3's SFT augmentations (seeded; dataset/lm_dataset.py)
    args = parser.parse_args()
    # Weights, logs and resume state all live under a `lora/` sub-folder named after the adapter:
    # out/lora/{lora_name}_{hidden}.pth, out/logs/lora/..., checkpoints/lora/..._resume.pth.
    args.save_weight = f"lora/{args.lora_name}"

    # ---- processes, model (frozen) + adapters (trained), data, optimizer
    dist_state = init_distributed(args.device, seed=args.seed)  # one seed on every rank: the same weights and adapters
    device, config = dist_state.device, model_config_from_args(args)
    tokenizer = load_tokenizer(args.tokenizer_path, vocab_size=config.vocab_size)
    model = init_model(config, args.from_weight, save_dir=args.save_dir, device=device)
    apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_targets, args.lora_dropout)
    trainable, total = count_parameters(model)
    print0(f"LoRA rank {args.lora_rank}, alpha {args.lora_alpha:g} on {args.lora_targets}: {trainable / 1e6:.3f}M "
           f"trainable of {total / 1e6:.3f}M parameters ({100 * trainable / total:.2f}%)")
    dataset = SFTDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines,
                         **augment_kwargs(args, tokenizer))  # --drop_empty_think, --add_system_ratio
    check_trainable(dataset, args.max_seq_len, verbose=dist_state.is_main)  # stop if truncation leaves nothing to learn
    batches = Batches.from_flags(args, dataset, dist_state, pad_id=tokenizer.pad_token_id)
    dtype, autocast, scaler = mixed_precision(args.dtype, device)
    # Only the adapters require grad (apply_lora froze the rest): the optimizer holds just them.
    optimizer = make_optimizer(model.parameters(), args.learning_rate, args.weight_decay, device)

    # ---- the run's files, step range and schedules; resume (--from_resume 1), then compile / DDP, then the log
    run = TrainRun.from_flags(args, config, dist_state, batches)
    step = run.resume(model, optimizer, scaler, batches)  # 0 unless --from_resume 1 finds a checkpoint
    model = wrap_model(model, dist_state, compile=bool(args.use_compile))
    logger = run.open_logger(step, batches, dtype)

    # ---- the loop (exactly SFT's; gradients reach only the adapters)
    for group in islice(batches, run.batches_left(step)):  # islice: stop at --max_steps
        lr = set_lr(optimizer, run.lr(step))
        for i, batch in enumerate(group):
            # DDP all-reduces the gradients once per group: the last micro-batch's forward decides
            with ddp_sync(model, sync=i == len(group) - 1), autocast:
                # labelled_only: logits only where the loss looks (the assistant tokens); not under compile
                out = model(input_ids=batch["input_ids"], labels=batch["labels"], labelled_only=not args.use_compile)
                loss = out.loss + out.aux_loss  # CE on the assistant tokens + MoE balance loss (0 if dense)
            scaler.scale(loss / len(group)).backward()  # outside autocast, as PyTorch advises
            logger.add(tokens=batch["attention_mask"].sum(), loss=loss,
                       aux_loss=out.aux_loss if config.use_moe else None)
        grad_norm = optimizer_step(optimizer, scaler, args.grad_clip)
        step += 1
        logger.log(step, {"lr": lr, "grad_norm": grad_norm}, epoch=batches.current_epoch)
        # The released file is the adapter alone, in fp32 (tiny, and B starts at 0 so small updates matter), with
        # its rank / alpha / targets in a JSON beside it: loaders then need no --lora_alpha.
        if run.maybe_save(step, model, optimizer, scaler, batches, weights=lora_state_dict) and dist_state.is_main:
            save_lora_meta(unwrap(model), run.weight_file)
    run.finish(step)


if __name__ == "__main__":
    run_main(main)
