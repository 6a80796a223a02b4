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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import PadCollator, SFTDataset  # noqa: E402
from trainer.trainer_utils import (TrainLoop, add_common_args, cleanup_distributed, init_distributed,  # noqa: E402
                                   init_model, lm_loss, model_config_from_args, run_main, setup_seed)


def main():
    parser = argparse.ArgumentParser(description="MiniMind full-parameter SFT")
    add_common_args(parser, stage="full_sft", data_path="dataset/sft_mini_512.jsonl", epochs=2, batch_size=16,
                    learning_rate=1e-5, max_seq_len=512, accumulation_steps=1, from_weight="pretrain")
    args = parser.parse_args()

    dist_state = init_distributed(args.device)
    setup_seed(args.seed)
    log = print if dist_state.is_main else (lambda *a, **k: None)
    model, tokenizer = init_model(model_config_from_args(args), args.from_weight, args.save_dir,
                                  args.tokenizer_path, dist_state.device, log)
    train_ds = SFTDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)
    collate = PadCollator(tokenizer.pad_token_id, pad_to=args.max_seq_len if args.pad_to_max else None,
                          pad_multiple=64 if args.use_compile else 1)
    # Length-grouped batches (by record size) + dynamic padding: little compute is spent on padding.
    lengths = train_ds.data.byte_lengths() if args.group_by_length and not args.pad_to_max else None

    TrainLoop(args, "full_sft", model, dist_state).run(train_ds, collate, lm_loss, lengths=lengths)
    cleanup_distributed()


if __name__ == "__main__":
    run_main(main)
