"""Every post-training stage under `torchrun --nproc_per_node 2` on CPU (gloo).

Pretrain/SFT (test_training.py), LoRA, DPO (test_lora.py, test_dpo.py) and GRPO (test_rl.py) have their own
2-process tests; this file covers the remaining stages: distillation, reasoning, PPO and SPO.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from trainer.trainer_utils import half_state_dict  # noqa: E402

SAMPLE = ROOT / "dataset" / "sample"
TINY = ["--hidden_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4",
        "--num_key_value_heads", "2", "--device", "cpu", "--num_workers", "0", "--dtype", "float32"]


def save_tiny(path, hidden=64, seed=0):
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(half_state_dict(model), path)


def torchrun(script, *args, tmp):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(ROOT / "trainer" / script), *TINY, "--save_dir", str(tmp / "out"),
           "--checkpoint_dir", str(tmp / "ckpt"), "--log_interval", "1", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", MINIMIND_CACHE=str(tmp / "cache"))
    p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{script} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def log_steps(tmp, name):
    return [json.loads(l)["step"] for l in (tmp / "out" / "logs" / f"{name}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", ["distillation", "reason", "ppo", "spo"])
def test_stage_runs_under_two_process_gloo(tmp_path, stage):
    out = tmp_path / "out"
    if stage == "distillation":
        save_tiny(out / "full_sft_64.pth", 64, 0)
        save_tiny(out / "full_sft_128.pth", 128, 1)
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
    p = torchrun(f"train_{stage}.py", *args, "--max_steps", 2, tmp=tmp_path)
    assert "2 process(es)" in p.stdout
    for name in outputs:
        assert (out / name).is_file(), name
    assert log_steps(tmp_path, log)[-1] == 2
