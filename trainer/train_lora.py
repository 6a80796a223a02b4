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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import SFTDataset  # noqa: E402
from model.model_lora import (DEFAULT_TARGETS, apply_lora, count_parameters, lora_state_dict,  # noqa: E402
                              save_lora_meta)
from trainer.trainer_utils import (TrainLoop, add_common_args, cleanup_distributed, lm_loss,  # noqa: E402
                                   padded_dataset, run_main, setup_stage, unwrap, weight_path)


class LoRATrainLoop(TrainLoop):
    """The shared loop; only the released file differs: the adapter alone, not the whole model."""

    def weights_to_save(self, model) -> dict:
        return lora_state_dict(model)  # fp32: tiny, and B starts at 0 so small updates matter

    def save(self):
        super().save()
        if self.ds.is_main:  # rank / alpha / targets beside the adapter: loaders then need no --lora_alpha
            save_lora_meta(unwrap(self.model), weight_path(self.args.save_dir, self.args.save_weight, self.config))


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
    args = parser.parse_args()
    # Weights, logs and resume state all live under a `lora/` sub-folder named after the adapter:
    # out/lora/{lora_name}_{hidden}.pth, out/logs/lora/..., checkpoints/lora/..._resume.pth.
    args.save_weight = f"lora/{args.lora_name}"

    dist_state, model, tokenizer, log = setup_stage(args)
    apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_targets, args.lora_dropout)
    trainable, total = count_parameters(model)
    log(f"LoRA rank {args.lora_rank}, alpha {args.lora_alpha:g} on {args.lora_targets}: {trainable / 1e6:.3f}M "
        f"trainable of {total / 1e6:.3f}M parameters ({100 * trainable / total:.2f}%)")

    train_ds, collate, lengths = padded_dataset(args, tokenizer, SFTDataset)
    lora_params = [p for p in model.parameters() if p.requires_grad]
    loop = LoRATrainLoop(args, "lora", model, dist_state, params=lora_params)
    loop.run(train_ds, collate, lm_loss, lengths=lengths)
    cleanup_distributed()


if __name__ == "__main__":
    run_main(main)
