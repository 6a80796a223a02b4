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
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any directory

from dataset.lm_dataset import IGNORE_INDEX, SFTDataset, add_augment_args, augment_kwargs, check_trainable  # noqa: E402
from model.checkpoint import load_tokenizer  # noqa: E402
from model.config_flags import model_config_from_args  # noqa: E402
from model.errors import run_main  # noqa: E402
from model.model_minimind import MiniMindConfig  # noqa: E402
from trainer.trainer_utils import (Batches, TrainRun, add_common_args, ddp_sync, freeze, init_distributed,  # noqa: E402
                                   init_model, make_optimizer, mixed_precision, optimizer_step, set_lr, wrap_model)


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


def distillation_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float):
    """(loss, ce, kl) with loss = α · CE(student, label) + (1 − α) · T² · KL(teacher ‖ student).

    student_logits, teacher_logits: (B, T, V); labels: (B, T) with -100 where unlabelled. Position t predicts
    token t+1, so logits[:, :-1] are scored against labels[:, 1:]. Both terms are means over labelled tokens;
    a batch with none (all prompt after truncation) gives 0, not NaN.
    """
    student_logits, teacher_logits, targets = student_logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:]
    mask = targets != IGNORE_INDEX
    ce = F.cross_entropy(student_logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                         reduction="sum") / mask.sum().clamp(min=1)
    kl = distillation_kl(student_logits, teacher_logits, mask, temperature)
    return alpha * ce + (1 - alpha) * kl, ce, kl


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
    add_augment_args(parser)  # upstream minimind-3's SFT augmentations (seeded; dataset/lm_dataset.py)
    args = parser.parse_args()
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.temperature <= 0:
        parser.error(f"--temperature must be positive, got {args.temperature}")
    if args.teacher_weight in ("", "none"):
        parser.error("--teacher_weight is required: distilling from a random teacher teaches nothing")

    # ---- processes, student + teacher, data, optimizer
    dist_state = init_distributed(args.device, seed=args.seed)  # one seed on every rank: the same initial weights
    device, config = dist_state.device, model_config_from_args(args)
    tokenizer = load_tokenizer(args.tokenizer_path, vocab_size=config.vocab_size)
    model = init_model(config, args.from_weight, save_dir=args.save_dir, device=device)
    # The teacher loads like the student, then is frozen. The KL compares the two distributions id by id, so it
    # has the student's vocabulary: a teacher trained with another tokenizer fails its strict load, which names
    # the file's vocabulary ("... and its 6500-token tokenizer").
    teacher_config = MiniMindConfig(hidden_size=args.teacher_hidden_size,
                                    num_hidden_layers=args.teacher_num_hidden_layers,
                                    num_attention_heads=args.teacher_num_attention_heads,
                                    num_key_value_heads=args.teacher_num_key_value_heads,
                                    use_moe=bool(args.teacher_use_moe), vocab_size=config.vocab_size)
    teacher = freeze(init_model(teacher_config, args.teacher_weight, save_dir=args.save_dir, device=device,
                                flag="--teacher_weight", size_flags="--teacher_hidden_size/--teacher_use_moe"))
    dataset = SFTDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines,
                         **augment_kwargs(args, tokenizer))  # --drop_empty_think, --add_system_ratio
    check_trainable(dataset, args.max_seq_len, verbose=dist_state.is_main)  # stop if truncation leaves nothing to learn
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
                out = model(input_ids=batch["input_ids"])
                with torch.no_grad():  # the teacher only runs forward
                    teacher_logits = teacher(input_ids=batch["input_ids"]).logits
                loss, ce, kl = distillation_loss(out.logits, teacher_logits, batch["labels"], args.alpha,
                                                 args.temperature)
                loss = loss + out.aux_loss  # + the student's MoE balance loss (0 if dense)
            scaler.scale(loss / len(group)).backward()  # outside autocast, as PyTorch advises
            logger.add(tokens=batch["attention_mask"].sum(), loss=loss, ce=ce, kl=kl,
                       aux_loss=out.aux_loss if config.use_moe else None)
        grad_norm = optimizer_step(optimizer, scaler, args.grad_clip)
        step += 1
        logger.log(step, {"lr": lr, "grad_norm": grad_norm}, epoch=batches.current_epoch)
        run.maybe_save(step, model, optimizer, scaler, batches)  # every --save_interval steps and at the end
    run.finish(step)


if __name__ == "__main__":
    run_main(main)
