"""Knowledge distillation (white-box): a small student learns from a bigger frozen teacher's full next-token
distributions, not only from the one correct token.

Data:   SFT-format JSONL (upstream: the SFT data), rendered with the ChatML template; only assistant tokens
        (content + <|im_end|>) are trained, exactly as in SFT.
Loss:   over the labelled positions, with z_s, z_t the student / teacher logits and T the temperature,
            loss = α · CE(z_s, label) + (1 − α) · T² · KL( softmax(z_t / T) ‖ softmax(z_s / T) )
        (+ the student's MoE balance loss). The KL is summed over the vocabulary and averaged over tokens;
        T² keeps its gradient scale independent of T (Hinton et al. 2015). A higher T exposes more of the
        teacher's "dark knowledge" (how it ranks the wrong tokens). Logged: ce, kl and the total loss.
        Teacher and student must share the tokenizer/vocabulary: the KL compares distributions over the same
        token ids, so a vocab mismatch is an error.
Output: out/full_dist_{hidden}[_moe].pth (upstream's name), checkpoints/full_dist_{hidden}[_moe]_resume.pth.

    # teacher: out/full_sft_768.pth (16 layers); student: out/full_sft_512.pth (8 layers)
    python trainer/train_distillation.py --from_weight full_sft --teacher_weight full_sft \
        --teacher_hidden_size 768 --teacher_num_hidden_layers 16
    torchrun --nproc_per_node 2 trainer/train_distillation.py
    python trainer/train_distillation.py --from_resume 1

Defaults follow upstream: α = 0.5, T = 1.5, lr 5e-6, 6 epochs, batch 32. The teacher runs forward only
(no_grad, eval), one copy per process.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import IGNORE_INDEX, SFTDataset  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from trainer.trainer_utils import (Batch, TrainLoop, WeightLoadError, add_common_args,  # noqa: E402
                                   cleanup_distributed, load_weights, padded_dataset, run_main, setup_stage,
                                   weight_path)


def distillation_kl(student_logits, teacher_logits, mask, temperature: float = 1.0) -> torch.Tensor:
    """T² · mean over masked positions of KL(p_t ‖ p_s) = Σ_v p_t (log p_t − log p_s), p = softmax(z / T).

    student_logits, teacher_logits: (..., V) for the same positions; mask: (...) bool, True = counted.
    Both sides are taken in log space (log_target=True), so a teacher probability that underflows to 0 gives
    0 · log 0 = 0 instead of NaN.
    """
    s = student_logits[mask].float() / temperature
    t = teacher_logits[mask].float() / temperature
    kl_sum = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction="sum")
    return kl_sum / max(s.shape[0], 1) * temperature ** 2


def check_same_vocab(student, teacher):
    """The KL term compares the two models' distributions id by id, so they must share the vocabulary."""
    sv, tv = student.config.vocab_size, teacher.config.vocab_size
    if sv != tv or student.lm_head.out_features != teacher.lm_head.out_features:
        raise WeightLoadError(f"teacher vocab_size {tv} != student vocab_size {sv}: distillation needs both models "
                              f"trained with the same tokenizer (same token ids)")


def load_teacher(args, device, log=print):
    """Build the teacher from the --teacher_* flags and load --teacher_weight strictly; frozen, eval mode."""
    w = args.teacher_weight
    config = MiniMindConfig(hidden_size=args.teacher_hidden_size, num_hidden_layers=args.teacher_num_hidden_layers,
                            num_attention_heads=args.teacher_num_attention_heads,
                            num_key_value_heads=args.teacher_num_key_value_heads,
                            use_moe=bool(args.teacher_use_moe))
    path = Path(w) if w.endswith(".pth") else weight_path(args.save_dir, w, config)
    if not path.is_file():
        raise FileNotFoundError(f"--teacher_weight {w}: {path} not found. Check --teacher_hidden_size/"
                                f"--teacher_use_moe and --save_dir, or pass the .pth path.")
    # Read the teacher's vocab from its embedding so a different tokenizer is reported as such (check_same_vocab)
    # rather than as a generic shape mismatch. mmap: only that tensor's header is touched here.
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("model", state)
    if "model.embed_tokens.weight" in state:
        config.vocab_size = state["model.embed_tokens.weight"].shape[0]
    del state
    teacher = load_weights(MiniMindForCausalLM(config), path, f"--teacher_weight {w}")
    teacher.eval().requires_grad_(False)
    n = sum(p.numel() for p in teacher.parameters())
    log(f"teacher: {path} ({n / 1e6:.3f}M parameters, hidden={config.hidden_size}, "
        f"layers={config.num_hidden_layers}, moe={int(config.use_moe)})")
    return teacher.to(device)


def make_distill_loss_fn(teacher, alpha: float, temperature: float, student_moe: bool = False):
    def loss_fn(model, batch) -> Batch:
        input_ids, labels = batch["input_ids"], batch["labels"]
        out = model(input_ids=input_ids)
        with torch.no_grad():
            teacher_logits = teacher(input_ids=input_ids).logits[:, :-1]
        # Position t predicts token t+1: score logits[:, :-1] against labels[:, 1:].
        student_logits, targets = out.logits[:, :-1], labels[:, 1:]
        mask = targets != IGNORE_INDEX
        # Mean over labelled tokens; clamp so a batch with none (all prompt after truncation) gives 0, not NaN.
        ce = F.cross_entropy(student_logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                             reduction="sum") / mask.sum().clamp(min=1)
        kl = distillation_kl(student_logits, teacher_logits, mask, temperature)
        loss = alpha * ce + (1 - alpha) * kl + out.aux_loss
        metrics = {"ce": ce.detach(), "kl": kl.detach()}
        if student_moe:
            metrics["aux_loss"] = out.aux_loss.detach()
        return Batch(loss=loss, n_tokens=batch["attention_mask"].sum(), metrics=metrics)

    return loss_fn


def main():
    parser = argparse.ArgumentParser(description="MiniMind white-box knowledge distillation")
    add_common_args(parser, stage="full_dist", data_path="dataset/sft_mini_512.jsonl", epochs=6, batch_size=32,
                    learning_rate=5e-6, max_seq_len=512, from_weight="full_sft")
    parser.add_argument("--alpha", type=float, default=0.5, help="loss = alpha * CE + (1 - alpha) * T^2 * KL")
    parser.add_argument("--temperature", type=float, default=1.5, help="softmax temperature of the KL term")
    parser.add_argument("--teacher_weight", type=str, default="full_sft",
                        help="teacher stage name (out/{name}_{teacher_hidden}.pth) or a .pth path")
    parser.add_argument("--teacher_hidden_size", type=int, default=768)
    parser.add_argument("--teacher_num_hidden_layers", type=int, default=16)
    parser.add_argument("--teacher_num_attention_heads", type=int, default=8)
    parser.add_argument("--teacher_num_key_value_heads", type=int, default=2)
    parser.add_argument("--teacher_use_moe", type=int, default=0, choices=[0, 1])
    args = parser.parse_args()
    assert 0.0 <= args.alpha <= 1.0, f"--alpha must be in [0, 1], got {args.alpha}"
    assert args.temperature > 0, f"--temperature must be positive, got {args.temperature}"
    if args.teacher_weight in ("", "none"):
        parser.error("--teacher_weight is required: distilling from a random teacher teaches nothing")

    dist_state, model, tokenizer, log = setup_stage(args)
    teacher = load_teacher(args, dist_state.device, log)
    check_same_vocab(model, teacher)
    train_ds, collate, lengths = padded_dataset(args, tokenizer, SFTDataset)

    loss_fn = make_distill_loss_fn(teacher, args.alpha, args.temperature, model.config.use_moe)
    TrainLoop(args, "full_dist", model, dist_state).run(train_ds, collate, loss_fn, lengths=lengths)
    cleanup_distributed()


if __name__ == "__main__":
    run_main(main)
