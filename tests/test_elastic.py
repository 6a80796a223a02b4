"""Fault tolerance: torchrun restarts a group after a worker is SIGKILLed, and the run ends where an
uninterrupted run ends.

With torch 2.13 the restarted workers reconnected to the same rendezvous store as the dead group and could read
a dead worker's gloo address ("Gloo connectFullMesh failed ... Connection refused"); trainer_utils'
`elastic_attempt_store` gives each restart attempt fresh keys. Without it this test fails on the second kill.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import SAMPLE, free_port, run_trainer, tiny_cpu_flags, train_log  # noqa: E402

FLAGS = ["--data_path", SAMPLE / "pretrain.jsonl", "--batch_size", 2, "--max_seq_len", 64, "--epochs", 1,
         "--max_steps", 60, "--log_interval", 1, "--save_interval", 4, "--accumulation_steps", 1]


def worker_pids(marker: str, local_rank: int) -> list:
    """PIDs of the training workers whose command line contains `marker` and whose LOCAL_RANK is `local_rank`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(marker.encode() in c for c in cmd) and b"train_pretrain.py" in b" ".join(cmd) \
                and f"LOCAL_RANK={local_rank}".encode() in env \
                and any(e.startswith(b"TORCHELASTIC_RESTART_COUNT=") for e in env):
            pids.append(int(entry.name))
    return pids


def wait_for(predicate, timeout: float, what: str, log: Path):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; log:\n{log.read_text()[-3000:]}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find the workers")
def test_torchrun_restarts_after_killed_workers_and_matches_uninterrupted_run(tmp_path):
    # Reference: the same 2-process run, never interrupted.
    ref = tmp_path / "ref"
    run_trainer("train_pretrain.py", *FLAGS, tmp=ref, nproc=2, cache=tmp_path / "cache")
    ref_rows = train_log(ref / "out", "pretrain_64")
    last_step = ref_rows[-1]["step"]

    run = tmp_path / "run"
    run.mkdir()
    log = run / "log.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max_restarts", "3",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
           str(ROOT / "trainer" / "train_pretrain.py"), *tiny_cpu_flags(run / "out", run / "ckpt"),
           *[str(a) for a in FLAGS], "--from_resume", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1",
               MINIMIND_CACHE=str(tmp_path / "cache"))
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=run, env=env, stdout=f, stderr=subprocess.STDOUT)
    resume_file = run / "ckpt" / "pretrain_64_resume.pth"
    try:
        # Kill rank 1, then rank 0, then rank 1 again, each time after the new attempt has resumed and saved.
        for attempt, victim in enumerate([1, 0, 1]):
            wait_for(lambda: log.read_text().count("resumed from") >= attempt and resume_file.exists()
                     and len(worker_pids(str(run), victim)) == 1, 120, f"attempt {attempt} to train", log)
            saved = resume_file.stat().st_mtime_ns
            wait_for(lambda: resume_file.stat().st_mtime_ns != saved, 120, f"a checkpoint in attempt {attempt}", log)
            os.kill(worker_pids(str(run), victim)[0], signal.SIGKILL)
            wait_for(lambda: not worker_pids(str(run), victim) or
                     log.read_text().count("resumed from") > attempt, 60, "the worker to die", log)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "connectFullMesh failed" not in text
    assert text.count("resumed from") == 3

    # Exact resume: the last optimizer step logs the same loss, and the weights are the same.
    rows = train_log(run / "out", "pretrain_64")
    assert rows[-1]["step"] == last_step
    assert rows[-1]["loss"] == pytest.approx(ref_rows[-1]["loss"], abs=1e-6)
    a = torch.load(ref / "out" / "pretrain_64.pth", weights_only=True)
    b = torch.load(run / "out" / "pretrain_64.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
