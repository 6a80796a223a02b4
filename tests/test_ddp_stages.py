"""Every post-training stage under `torchrun --nproc_per_node 2` on CPU (gloo).

Pretrain/SFT (test_training.py), LoRA, DPO (test_lora.py, test_dpo.py) and GRPO (test_rl.py) have their own
2-process tests; this file covers the remaining stages: distillation, reasoning, PPO and SPO.
"""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import SAMPLE, run_trainer, save_tiny, train_log  # noqa: E402


@pytest.mark.parametrize("stage", ["distillation", "reason", "ppo", "spo"])
def test_stage_runs_under_two_process_gloo(tmp_path, stage):
    out = tmp_path / "out"
    if stage == "distillation":
        save_tiny(out / "full_sft_64.pth", 0)
        save_tiny(out / "full_sft_128.pth", 1, hidden_size=128)
        args = ["--data_path", SAMPLE / "sft.jsonl", "--teacher_hidden_size", 128, "--teacher_num_hidden_layers", 2,
                "--teacher_num_attention_heads", 4, "--batch_size", 2, "--max_seq_len", 96]
        outputs, log = ["full_dist_64.pth"], "full_dist_64"
    elif stage == "reason":
        save_tiny(out / "dpo_64.pth")
        args = ["--data_path", SAMPLE / "reason.jsonl", "--batch_size", 2, "--max_seq_len", 96]
        outputs, log = ["reason_64.pth"], "reason_64"
    else:
        save_tiny(out / "full_sft_64.pth")
        args = ["--data_path", SAMPLE / "rlaif.jsonl", "--reward", "length:1,format:0.5", "--batch_size", 2,
                "--max_gen_len", 12, "--max_seq_len", 96]
        outputs = ["ppo_actor_64.pth", "ppo_critic_64.pth"] if stage == "ppo" else ["spo_64.pth"]
        log = "ppo_actor_64" if stage == "ppo" else "spo_64"
    p = run_trainer(f"train_{stage}.py", *args, "--log_interval", 1, "--max_steps", 2, tmp=tmp_path, nproc=2,
                    cache=tmp_path / "cache")
    assert "2 process(es)" in p.stdout
    for name in outputs:
        assert (out / name).is_file(), name
    assert train_log(out, log)[-1]["step"] == 2
