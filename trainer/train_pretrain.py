"""Stage 1 — pretraining: teach a randomly initialised MiniMind to continue text.

Data:   JSONL of {"text": ...} (upstream: pretrain_hq.jsonl), each document wrapped as <|im_start|> text <|im_end|>.
Loss:   next-token cross-entropy on every real token (padding is -100), plus the MoE balance loss if --use_moe.
Output: out/pretrain_{hidden}[_moe].pth (fp16 weights), checkpoints/pretrain_{hidden}[_moe]_resume.pth.

    python trainer/train_pretrain.py                                    # one GPU / CPU
    torchrun --nproc_per_node 2 trainer/train_pretrain.py               # DDP
    python trainer/train_pretrain.py --from_resume 1                    # continue after an interruption

Batches are padded only to their own longest sample (not to --max_seq_len as the original did); add
--pad_to_max for the original behaviour.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import PadCollator, PretrainDataset  # noqa: E402
from trainer.trainer_utils import (TrainLoop, add_common_args, cleanup_distributed, init_distributed,  # noqa: E402
                                   init_model, lm_loss, model_config_from_args, run_main, setup_seed)


def main():
    parser = argparse.ArgumentParser(description="MiniMind pretraining")
    add_common_args(parser, stage="pretrain", data_path="dataset/pretrain_hq.jsonl", epochs=1, batch_size=32,
                    learning_rate=5e-4, max_seq_len=512, accumulation_steps=8, from_weight="none")
    args = parser.parse_args()

    dist_state = init_distributed(args.device)
    setup_seed(args.seed)  # identical initial weights on every rank
    log = print if dist_state.is_main else (lambda *a, **k: None)
    model, tokenizer = init_model(model_config_from_args(args), args.from_weight, args.save_dir,
                                  args.tokenizer_path, dist_state.device, log)
    train_ds = PretrainDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)
    collate = PadCollator(tokenizer.pad_token_id, pad_to=args.max_seq_len if args.pad_to_max else None)

    TrainLoop(args, "pretrain", model, dist_state).run(train_ds, collate, lm_loss)
    cleanup_distributed()


if __name__ == "__main__":
    run_main(main)
