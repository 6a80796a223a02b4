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
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import PackedPretrainDataset, PretrainDataset, stack_collate  # noqa: E402
from trainer.trainer_utils import (TrainLoop, add_common_args, cleanup_distributed, lm_loss,  # noqa: E402
                                   padded_dataset, run_main, setup_stage)


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

    dist_state, model, tokenizer, _ = setup_stage(args)
    if args.doc_attention and args.doc_attention_impl == "flex":
        from model.model_minimind import flex_attention
        if flex_attention is None or not dist_state.device.startswith("cuda"):
            parser.error("--doc_attention_impl flex needs torch >= 2.5 and a CUDA GPU (PyTorch has no "
                         "flex_attention backward on the CPU); use --doc_attention_impl sdpa")
    if args.packing:
        train_ds = PackedPretrainDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines,
                                         doc_attention=bool(args.doc_attention))
        collate, lengths = stack_collate, None
    else:
        train_ds, collate, lengths = padded_dataset(args, tokenizer, PretrainDataset)

    loss_fn = partial(lm_loss, doc_attention_impl=args.doc_attention_impl)
    TrainLoop(args, "pretrain", model, dist_state).run(train_ds, collate, loss_fn, lengths=lengths)
    cleanup_distributed()


if __name__ == "__main__":
    run_main(main)
