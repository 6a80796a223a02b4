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

from dataset.lm_dataset import SFTDataset  # noqa: E402
from trainer.trainer_utils import (TrainLoop, add_common_args, cleanup_distributed, lm_loss,  # noqa: E402
                                   padded_dataset, run_main, setup_stage)


def main():
    parser = argparse.ArgumentParser(description="MiniMind full-parameter SFT")
    add_common_args(parser, stage="full_sft", data_path="dataset/sft_mini_512.jsonl", epochs=2, batch_size=16,
                    learning_rate=1e-5, max_seq_len=512, accumulation_steps=1, from_weight="pretrain")
    args = parser.parse_args()

    dist_state, model, tokenizer, _ = setup_stage(args)
    # Length-grouped batches (by record size) + dynamic padding: little compute is spent on padding.
    train_ds, collate, lengths = padded_dataset(args, tokenizer, SFTDataset)

    TrainLoop(args, "full_sft", model, dist_state).run(train_ds, collate, lm_loss, lengths=lengths)
    cleanup_distributed()


if __name__ == "__main__":
    run_main(main)
