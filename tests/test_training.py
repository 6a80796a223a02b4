"""Pretrain / SFT end to end: loss falls on real text, exact resume, DDP on gloo, clear errors, atomic saves, no
deprecation warnings."""
import argparse
import re
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import (SAMPLE, SHARED, TINY, run_script, run_trainer, tiny_cpu_flags, train_log,  # noqa: E402
                     write_jsonl)
from model.atomic_io import atomic_save  # noqa: E402
from model.model_minimind import MiniMindConfig  # noqa: E402
from model.runtime import resolve_dtype  # noqa: E402
from trainer.trainer_utils import get_lr  # noqa: E402


def small_pretrain_file(tmp, n=20):
    src = SAMPLE / "pretrain.jsonl"
    lines = src.read_text(encoding="utf-8").splitlines()[:n]
    path = tmp / "pre.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ real text
def test_pretrain_loss_falls_on_real_text(tmp_path):
    data = SHARED / "mini" / "pretrain.jsonl"
    if not data.exists():
        pytest.skip(f"{data} not found: the shared real-data folder sits beside the repo only in CI/dev setups")
    run_trainer("train_pretrain.py", "--data_path", data, "--batch_size", 8, "--accumulation_steps", 1,
                "--max_seq_len", 128, "--learning_rate", 3e-3, "--max_steps", 40, "--log_interval", 1, tmp=tmp_path)
    losses = [r["loss"] for r in train_log(tmp_path / "out", "pretrain_64")]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, f"loss did not fall enough: {first:.3f} -> {last:.3f}"
    assert (tmp_path / "out" / "pretrain_64.pth").exists()
    assert (tmp_path / "ckpt" / "pretrain_64_resume.pth").exists()
    # Weights are saved in half precision with MiniMind2's keys.
    sd = torch.load(tmp_path / "out" / "pretrain_64.pth", weights_only=True)
    assert sd["model.embed_tokens.weight"].dtype == torch.float16 and "lm_head.weight" in sd


def test_bf16_autocast_on_cpu_tracks_fp32(tmp_path):
    """--dtype bfloat16 on a CPU (the auto choice where the CPU has native bf16): the same run as fp32 gives
    nearly the same loss curve and still learns; weights stay fp32 during training (saved as fp16)."""
    data = SHARED / "mini" / "pretrain.jsonl"
    if not data.exists():
        pytest.skip(f"{data} not found: the shared real-data folder sits beside the repo only in CI/dev setups")
    common = ["--data_path", data, "--batch_size", 8, "--accumulation_steps", 1, "--max_seq_len", 128,
              "--learning_rate", 3e-3, "--max_steps", 20, "--log_interval", 1, "--save_interval", 10]
    run_trainer("train_pretrain.py", *common, tmp=tmp_path / "fp32")
    proc = run_trainer("train_pretrain.py", *common, "--dtype", "bfloat16", tmp=tmp_path / "bf16")
    assert "dtype bfloat16" in proc.stdout
    l32 = [r["loss"] for r in train_log(tmp_path / "fp32" / "out", "pretrain_64")]
    l16 = [r["loss"] for r in train_log(tmp_path / "bf16" / "out", "pretrain_64")]
    assert len(l32) == len(l16) == 20
    assert l16 != l32, "bf16 autocast changed nothing: was it applied?"
    worst = max(abs(a - b) for a, b in zip(l32, l16))
    assert worst < 0.15, f"bf16 drifted from fp32 by {worst:.3f}: {l32} vs {l16}"
    assert sum(l16[-5:]) / 5 < sum(l16[:5]) / 5 - 0.5
    ck = torch.load(tmp_path / "bf16" / "ckpt" / "pretrain_64_resume.pth", weights_only=True)
    assert all(v.dtype == torch.float32 for v in ck["model"].values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("script,extra", [
    ("train_pretrain.py", []),
    ("train_full_sft.py", ["--from_weight", "none"]),
    # upstream's SFT augmentations, seeded per (seed, epoch, sample): the resumed run trains on the same samples
    ("train_full_sft.py", ["--from_weight", "none", "--add_system_ratio", "0.5", "--drop_empty_think", "0.8"]),
])
def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path, script, extra):
    """Pretrain: 14 short documents packed into 20 blocks of 64 tokens; micro-batch 4, accumulation 2 -> 3 steps
    per epoch (the last one a partial group), 2 epochs. SFT: length-grouped, dynamically padded batches.
    Interrupting after step 4 and resuming must give the same loss at every step."""
    data = small_pretrain_file(tmp_path, 14) if "pretrain" in script else SAMPLE / "sft.jsonl"
    common = ["--data_path", data, "--batch_size", 4, "--accumulation_steps", 2, "--epochs", 2,
              "--max_seq_len", 64, "--learning_rate", 1e-3, "--log_interval", 1, "--save_interval", 2, *extra]
    if "sft" in script:
        common += ["--max_steps", 6]  # the SFT sample file is larger; 6 steps are enough
    a, b = tmp_path / "a", tmp_path / "b"
    run_trainer(script, *common, tmp=a)
    run_trainer(script, *common, "--max_steps", 4, tmp=b)
    run_trainer(script, *common, "--from_resume", 1, tmp=b)
    name = "pretrain_64" if "pretrain" in script else "full_sft_64"
    la, lb = train_log(a / "out", name), train_log(b / "out", name)
    assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, 7))
    for ra, rb in zip(la, lb):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6), (ra, rb)
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-12)
    wa = torch.load(a / "out" / f"{name}.pth", weights_only=True)
    wb = torch.load(b / "out" / f"{name}.pth", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------------------------ DDP
def test_ddp_two_processes_gloo_pretrain_then_sft(tmp_path):
    data = small_pretrain_file(tmp_path, 40)
    p = run_trainer("train_pretrain.py", "--data_path", data, "--batch_size", 4, "--accumulation_steps", 1,
                    "--max_seq_len", 64, "--max_steps", 3, "--log_interval", 1, tmp=tmp_path, nproc=2)
    assert "2 process(es)" in p.stdout
    assert p.stdout.count("done:") == 1, "only rank 0 logs"
    rows = train_log(tmp_path / "out", "pretrain_64")
    assert [r["step"] for r in rows] == [1, 2, 3]
    run_trainer("train_full_sft.py", "--data_path", SAMPLE / "sft.jsonl", "--batch_size", 2, "--max_seq_len", 64,
                "--max_steps", 2, "--from_weight", "pretrain", tmp=tmp_path, nproc=2)
    assert (tmp_path / "out" / "full_sft_64.pth").exists()


def test_ddp_accumulation_equals_one_process_with_the_same_global_batch(tmp_path):
    """2 ranks x micro-batch 2 see, per micro-batch step, the same 4 packed blocks as 1 rank x micro-batch 4
    (ResumableSampler deals consecutive chunks to the ranks), so with accumulation 2 each optimizer step averages
    the same gradient: the same gradient norms and losses, and weights equal up to Adam's sign noise on
    near-zero gradients (at most 2 x lr per step). Skipping a group's all-reduce (ddp_sync arms it in the last
    micro-batch's forward; the backward runs after the context) gives each rank a half-batch gradient: a
    gradient norm ~40% off."""
    data = small_pretrain_file(tmp_path, 40)
    common = ["--data_path", data, "--accumulation_steps", 2, "--max_seq_len", 64, "--max_steps", 3,
              "--learning_rate", 1e-5, "--log_interval", 1]
    run_trainer("train_pretrain.py", *common, "--batch_size", 4, tmp=tmp_path / "one")
    run_trainer("train_pretrain.py", *common, "--batch_size", 2, tmp=tmp_path / "two", nproc=2)
    one, two = train_log(tmp_path / "one" / "out", "pretrain_64"), train_log(tmp_path / "two" / "out", "pretrain_64")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=2e-3)
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-3)
    wa, wb = (torch.load(tmp_path / d / "ckpt" / "pretrain_64_resume.pth", weights_only=True) for d in ("one", "two"))
    assert wa["consumed"] == wb["consumed"] == 24 and wa["model"].keys() == wb["model"].keys()
    assert max((wa["model"][k] - wb["model"][k]).abs().max().item() for k in wa["model"]) < 2 * 1e-5 * 3 + 1e-6


def test_resume_on_a_different_world_size(tmp_path):
    """A 1-process run resumed under torchrun with 2 processes continues at the rescaled step."""
    data = small_pretrain_file(tmp_path, 40)
    common = ["--data_path", data, "--batch_size", 4, "--accumulation_steps", 1, "--max_seq_len", 64,
              "--log_interval", 1, "--save_interval", 1]
    run_trainer("train_pretrain.py", *common, "--max_steps", 4, tmp=tmp_path)  # 16 samples consumed
    p = run_trainer("train_pretrain.py", *common, "--from_resume", 1, "--max_steps", 3, tmp=tmp_path, nproc=2)
    assert "step rescaled to 2" in p.stdout  # 16 samples / (4 per rank x 2 ranks)
    steps = [r["step"] for r in train_log(tmp_path / "out", "pretrain_64")]
    assert steps == [1, 2, 3, 4, 3]


# ------------------------------------------------------------------------------------------------ errors
def test_malformed_jsonl_fails_clearly_without_outputs(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "fine"}\n{"text": "broken\n', encoding="utf-8")
    p = run_trainer("train_pretrain.py", "--data_path", data, "--max_steps", 1, tmp=tmp_path, check=False)
    assert p.returncode == 2
    assert f"{data}:2: invalid JSON" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out" / "pretrain_64.pth").exists()
    p = run_trainer("train_pretrain.py", "--data_path", data, "--max_steps", 1, "--skip_bad_lines", "--packing", 0,
                    tmp=tmp_path)
    assert "skipped 1 bad line" in p.stdout


def test_document_aware_packing_trains_and_flex_on_cpu_is_refused(tmp_path):
    common = ["--data_path", small_pretrain_file(tmp_path, 14), "--batch_size", 2, "--max_seq_len", 64,
              "--max_steps", 2, "--log_interval", 1, "--doc_attention", 1]
    p = run_trainer("train_pretrain.py", *common, "--doc_attention_impl", "flex", tmp=tmp_path / "flex", check=False)
    assert p.returncode == 2 and "--doc_attention_impl flex needs" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "flex" / "out").exists() or not any((tmp_path / "flex" / "out").glob("*.pth"))
    run_trainer("train_pretrain.py", *common, tmp=tmp_path / "doc")  # auto = the dense SDPA mask on a CPU
    run_trainer("train_pretrain.py", *common[:-2], tmp=tmp_path / "plain")
    doc = [r["loss"] for r in train_log(tmp_path / "doc" / "out", "pretrain_64")]
    plain = [r["loss"] for r in train_log(tmp_path / "plain" / "out", "pretrain_64")]
    assert len(doc) == len(plain) >= 1 and doc[0] != pytest.approx(plain[0], abs=1e-6), "the mask changed nothing"


def test_sft_whose_samples_are_cut_before_their_replies_stops_before_training(tmp_path, tokenizer, run_in_process,
                                                                               capsys):
    """A system prompt longer than --max_seq_len cuts every sample before its reply: all labels -100, so the run
    used to log `loss: 0.0000 grad_norm: 0.000` and save untrained weights. It must stop (exit status 2) with one
    error line that names the file, the count and a --max_seq_len that fits, and write no weights; with only a
    minority cut, it warns and trains. Run in-process through the script's real CLI (run_in_process)."""
    from dataset.lm_dataset import SFTDataset, check_trainable
    script = ROOT / "trainer" / "train_full_sft.py"
    system = {"role": "system", "content": "You are MiniMind, a small and helpful assistant. " * 20}  # ~200 tokens
    cut = [{"conversations": [system, {"role": "user", "content": f"Question {i}?"},
                              {"role": "assistant", "content": f"Answer {i}."}]} for i in range(6)]
    data = write_jsonl(tmp_path / "long_system.jsonl", cut)
    common = ["--from_weight", "none", "--max_seq_len", 64, "--batch_size", 2, "--max_steps", 2, "--log_interval", 1]
    with pytest.raises(SystemExit) as exit_:
        run_in_process(script, *tiny_cpu_flags(tmp_path / "all", tmp_path / "all"), "--data_path", data, *common)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    assert f"error: 6 of 6 samples in {data} have no trainable token after truncation to --max_seq_len 64" in err, err
    assert not list((tmp_path / "all").rglob("*.pth")), "no weights, no checkpoint"
    fitting = int(re.search(r"--max_seq_len (\d+) fits 90% of them whole", err).group(1))
    assert check_trainable(SFTDataset(data, tokenizer, fitting), fitting) == 0  # the suggestion does fit

    short = [{"conversations": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": f"Hi {i}!"}]}
             for i in range(5)]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", short + cut[:1])
    out = run_in_process(script, *tiny_cpu_flags(tmp_path / "some", tmp_path / "some"), "--data_path", mixed, *common)
    assert (f"[data] warning: 1 of 6 samples in {mixed} have no trainable token after truncation to --max_seq_len 64"
            in out and "training goes on with the others" in out), out
    assert (tmp_path / "some" / "full_sft_64.pth").exists()
    assert all(r["loss"] > 0 for r in train_log(tmp_path / "some", "full_sft_64"))


def test_missing_from_weight_is_clear(tmp_path):
    p = run_trainer("train_full_sft.py", "--data_path", SAMPLE / "sft.jsonl", "--from_weight", "pretrain",
                    tmp=tmp_path, check=False)
    assert p.returncode == 2 and "--from_weight pretrain" in p.stderr and "pretrain_64.pth not found" in p.stderr
    assert "Traceback" not in p.stderr


def test_weights_of_another_size_are_rejected_clearly(tmp_path):
    from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
    wrong = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4))
    (tmp_path / "out").mkdir()
    torch.save(wrong.state_dict(), tmp_path / "out" / "pretrain_64.pth")
    p = run_trainer("train_full_sft.py", "--data_path", SAMPLE / "sft.jsonl", "--from_weight", "pretrain",
                    tmp=tmp_path, check=False)
    assert p.returncode == 2 and "does not match the model" in p.stderr and "num_hidden_layers=2" in p.stderr


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "w.pth"
    atomic_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.pth"], "no temp file left behind"


# ------------------------------------------------------------------------------------------------ any cwd
def test_scripts_run_from_any_directory(tmp_path):
    """`cd trainer && python train_pretrain.py` works: imports and default tokenizer path come from the repo."""
    data = small_pretrain_file(tmp_path)
    run_trainer("train_pretrain.py", "--data_path", data, "--max_steps", 1, "--max_seq_len", 32, "--batch_size", 2,
                tmp=tmp_path, cwd=ROOT / "trainer")
    assert (tmp_path / "out" / "pretrain_64.pth").exists()


# ------------------------------------------------------------------------------------------------ warnings
def test_a_normal_run_prints_no_deprecation_warning(tmp_path, monkeypatch):
    """pretrain -> SFT -> eval_llm, with Python showing every warning (PYTHONWARNINGS=default), print nothing
    deprecated. transformers 5.24's cache-keyword rename printed "`past_key_values`/`cache_params` are
    deprecated. Use `cache` instead." in every stage's log; a FutureWarning is the next break announced. A line
    here names a library call of ours to update (or, if it comes from a library's own import, one to report)."""
    monkeypatch.setenv("PYTHONWARNINGS", "default")  # the children inherit it
    data = small_pretrain_file(tmp_path)
    runs = [run_trainer("train_pretrain.py", "--data_path", data, "--max_steps", 2, "--max_seq_len", 64,
                        "--batch_size", 2, tmp=tmp_path),
            run_trainer("train_full_sft.py", "--data_path", SAMPLE / "sft.jsonl", "--from_weight", "pretrain",
                        "--max_steps", 2, "--max_seq_len", 64, "--batch_size", 2, tmp=tmp_path)]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("你好\nWho are you?\n", encoding="utf-8")
    runs.append(run_script([ROOT / "eval_llm.py", "--weight", "full_sft", "--save_dir", tmp_path / "out", *TINY,
                            "--device", "cpu", "--prompts_file", prompts, "--max_new_tokens", 8,
                            "--temperature", 0], cwd=tmp_path))
    assert "Who are you?" in runs[-1].stdout
    lines = [line for p in runs for line in (p.stdout + p.stderr).splitlines()]
    flagged = [line for line in lines if re.search(r"deprecat|FutureWarning|DeprecationWarning", line, re.I)]
    assert not flagged, "\n".join(flagged)


# ------------------------------------------------------------------------------------------------ pieces
def test_cosine_schedule_with_floor_and_warmup():
    assert get_lr(0, 100, 1.0) == pytest.approx(1.0)
    assert get_lr(50, 100, 1.0) == pytest.approx(0.55)
    assert get_lr(100, 100, 1.0) == pytest.approx(0.1)
    assert get_lr(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert get_lr(10, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    lrs = [get_lr(s, 100, 1.0) for s in range(101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and min(lrs) >= 0.1


def test_dtype_choice(tmp_path, monkeypatch):
    import model.runtime as tu
    zen4 = tmp_path / "zen4"
    zen4.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n")
    old = tmp_path / "old"
    old.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert tu.cpu_has_native_bf16(str(zen4)) and tu.cpu_has_native_bf16(str(arm))
    assert not tu.cpu_has_native_bf16(str(old)) and not tu.cpu_has_native_bf16(str(tmp_path / "missing"))
    monkeypatch.setattr(tu, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(tu, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "mps") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16


def test_batches_groups_position_and_resume():
    """Batches: groups of <= accumulation_steps micro-batches that never span epochs, a position that advances
    when a group is handed out, and a restored position that continues with exactly the remaining groups."""
    from trainer.trainer_utils import Batches, DistState

    data = [{"x": torch.tensor([i])} for i in range(10)]
    collate = lambda items: {"x": torch.cat([it["x"] for it in items])}  # noqa: E731
    make = lambda: Batches(data, collate, DistState(), batch_size=2, epochs=2, seed=0,  # noqa: E731
                           accumulation_steps=2)
    batches = make()
    assert batches.steps_per_epoch == 3 and batches.total_steps == 6  # 5 micro-batches per epoch: 2 + 2 + 1
    seen = []
    for group in batches:
        seen.append([b["x"].tolist() for b in group])
        if len(seen) == 2:
            assert batches.state_dict() == {"epoch": 0, "consumed": 8} and batches.current_epoch == 1
            saved = batches.state_dict()
        if len(seen) == 3:
            assert batches.state_dict() == {"epoch": 1, "consumed": 0}  # the epoch's last group points at the next
    assert [len(g) for g in seen] == [2, 2, 1, 2, 2, 1]
    assert sorted(x for g in seen[:3] for b in g for x in b) == list(range(10))  # each sample once per epoch
    resumed = make()
    resumed.load_state_dict(saved)
    assert resumed.steps_done() == 2
    assert [[b["x"].tolist() for b in g] for g in resumed] == seen[2:]


def test_a_resumed_run_sees_the_same_augmented_samples(tokenizer, tmp_path):
    """SFT augmentations (a random system prompt, dropped empty think blocks) and RL prompts' thinking switch are
    drawn per (seed, epoch, sample): a run interrupted mid-epoch and resumed (by a new process: fresh dataset and
    Batches, here with DataLoader workers) gets exactly the batches of the uninterrupted run, and the second epoch
    draws afresh (Batches hands the epoch to the dataset)."""
    from dataset.lm_dataset import SYSTEM_PROMPTS, PadCollator, RLAIFDataset, SFTDataset
    from trainer.trainer_utils import Batches, DistState

    def make(cls, workers=0, **kw):
        ds = cls(SAMPLE / ("sft.jsonl" if cls is SFTDataset else "rlaif.jsonl"), tokenizer, 128, seed=3, **kw)
        collate = PadCollator(tokenizer.pad_token_id) if cls is SFTDataset else (lambda items: {
            "prompt": [it["prompt"] for it in items]})
        return Batches(ds, collate, DistState(), batch_size=8, epochs=2, seed=0, accumulation_steps=2,
                       num_workers=workers)

    def seen(batches, stop=None):
        out = []
        for group in batches:
            out.append([b["input_ids"].tolist() if "input_ids" in b else b["prompt"] for b in group])
            if len(out) == stop:
                return out, batches.state_dict()
        return out, None

    for cls, kw in [(SFTDataset, {"add_system_ratio": 0.5, "drop_empty_think": 0.5}),
                    (RLAIFDataset, {"thinking_ratio": 0.5})]:
        full, _ = seen(make(cls, **kw))
        steps = len(full) // 2  # one epoch
        head, state = seen(make(cls, **kw), stop=steps - 2)
        resumed = make(cls, workers=2, **kw)
        resumed.load_state_dict(state)
        tail, _ = seen(resumed)
        assert head + tail == full
        # the augmentation is there, and each epoch draws its own
        text = [tokenizer.decode(ids) if cls is SFTDataset else ids for g in full for b in g for ids in b]
        marker = (lambda t: any(p in t for p in SYSTEM_PROMPTS)) if cls is SFTDataset else (
            lambda t: t.endswith("<think>\n\n</think>\n\n"))
        half = len(text) // 2
        assert 0 < sum(map(marker, text[:half])) < half
        epoch1 = sorted(t for t in text[:half] if marker(t))
        epoch2 = sorted(t for t in text[half:] if marker(t))
        assert epoch1 != epoch2


class _DataBuilt(Exception):
    """Raised by a recording dataset: the stage script stops once its data is built."""


@pytest.mark.parametrize("script", ["train_full_sft.py", "train_lora.py", "train_distillation.py", "train_dpo.py"])
def test_sft_stages_take_the_augmentation_flags(request, tmp_path, monkeypatch, run_in_process, script):
    """--drop_empty_think and --add_system_ratio reach the dataset of SFT, LoRA, distillation and DPO, seeded by
    --seed; unset, they are upstream's 0.8 / 0.2 with upstream's minimind-3 tokenizer and 0 / 0 with ours."""
    import dataset.lm_dataset as lm
    from helpers import MINIMIND3_TOKENIZER, save_tiny
    cls_name = "DPODataset" if "dpo" in script else "SFTDataset"
    seen = {}

    class Recorder(getattr(lm, cls_name)):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.update(rates=(self.drop_empty_think, self.add_system_ratio), seed=self.seed)
            raise _DataBuilt

    monkeypatch.setattr(lm, cls_name, Recorder)
    request.getfixturevalue("mm3")  # skips without ../shared (conftest.py)
    out = tmp_path / "out"
    save_tiny(out / "full_sft_64.pth", 0)
    save_tiny(out / "full_sft_128.pth", 1, hidden_size=128)  # the distillation teacher
    common = [*tiny_cpu_flags(out, tmp_path / "ckpt"), "--data_path", SAMPLE / ("dpo.jsonl" if "dpo" in script
                                                                              else "sft.jsonl"), "--max_seq_len", 128]
    if "distillation" in script:
        common += ["--teacher_hidden_size", 128, "--teacher_num_hidden_layers", 2, "--teacher_num_attention_heads", 4]
    if "full_sft" in script:
        common += ["--from_weight", "none"]
    for extra, rates in [([], (0.0, 0.0)), (["--tokenizer_path", MINIMIND3_TOKENIZER], (0.8, 0.2)),
                         (["--drop_empty_think", 0.3, "--add_system_ratio", 0.6, "--seed", 7], (0.3, 0.6))]:
        with pytest.raises(_DataBuilt):
            run_in_process(ROOT / "trainer" / script, *common, *extra)
        assert seen["rates"] == rates and seen["seed"] == (7 if "--seed" in extra else 42)


def test_train_logger_cadence_and_rows(tmp_path, capsys):
    """A row on the first step, whenever the steps cross a multiple of log_interval (RL may take several steps at
    once) and on the last step; values averaged over what was added since the last row; tokens summed."""
    from trainer.trainer_utils import DistState, TrainLogger

    logger = TrainLogger("run_64", tmp_path, DistState(), log_interval=3, last_step=8)
    for step in (1, 2, 4, 5, 7, 8):  # crosses 3 at step 4, 6 at step 7
        logger.add(tokens=torch.tensor(10), loss=torch.tensor(float(step)), aux_loss=None)
        logger.add(tokens=torch.tensor(10), loss=torch.tensor(float(step) + 1))
        logger.log(step, {"lr": 0.1, "grad_norm": torch.tensor(2.0)}, epoch=1)
    logger.close()
    rows = train_log(tmp_path, "run_64")
    assert [r["step"] for r in rows] == [1, 4, 7, 8]
    assert [r["loss"] for r in rows] == [1.5, 3.5, 6.5, 8.5]  # mean of the micro-batches since the last row
    assert list(rows[0]) == ["step", "epoch", "lr", "grad_norm", "tokens_per_s", "loss", "time"]
    assert rows[0]["grad_norm"] == 2.0 and rows[0]["tokens_per_s"] > 0 and "aux_loss" not in rows[0]
    out = capsys.readouterr().out
    assert "[run_64] step 4/8 loss: 3.5000 lr: 1.000e-01 grad_norm: 2.000" in out
    # a fresh run starts a fresh log; append=True (a resume) keeps it
    TrainLogger("run_64", tmp_path, DistState(), log_interval=3, last_step=8, append=True).close()
    assert len(train_log(tmp_path, "run_64")) == 4
    TrainLogger("run_64", tmp_path, DistState(), log_interval=3, last_step=8).close()
    assert not (tmp_path / "logs" / "run_64.jsonl").exists()


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")  # a "cuda" run without a GPU
def test_batches_are_padded_to_multiples_of_64_on_accelerators_only(tokenizer, monkeypatch):
    """SFT-style batches on a GPU/NPU (or compiled) are padded to a multiple of 64 (odd lengths get slow kernels
    there: 0.64x vs 1.9x on an H100, see padding_multiple); on a CPU to the longest row only."""
    from dataset.lm_dataset import SFTDataset
    from trainer.trainer_utils import Batches, DistState, add_common_args, padding_multiple
    monkeypatch.setattr(Batches, "_to_device", lambda self, batch: batch)  # no GPU here: the batches stay on the CPU
    assert [padding_multiple(d, c) for d, c in [("cpu", False), ("cpu", True), ("cuda", False), ("cuda:1", False),
                                                ("npu", False), ("mps", False)]] == [1, 64, 64, 64, 64, 1]
    ds = SFTDataset(SAMPLE / "sft.jsonl", tokenizer, 200)
    lengths = {}
    parser = add_common_args(argparse.ArgumentParser(), stage="full_sft", data_path="d.jsonl")
    args = parser.parse_args(["--batch_size", "4", "--seed", "0", "--num_workers", "0", "--max_seq_len", "200"])
    for device in ("cpu", "cuda"):
        batches = Batches.from_flags(args, ds, DistState(device=device), pad_id=tokenizer.pad_token_id)
        batches = list(islice(batches, 12))
        lengths[device] = [b[0]["input_ids"].shape[1] for b in batches]
        assert all(int(b[0]["attention_mask"][:, -1].max()) == 1 for b in batches if device == "cpu")
    assert all(t % 64 == 0 for t in lengths["cuda"]) and any(t % 64 for t in lengths["cpu"])
    assert all(c == -(-p // 64) * 64 for p, c in zip(lengths["cpu"], lengths["cuda"]))


def test_train_run_step_range_save_schedule_and_resume(tmp_path):
    """TrainRun: the loop stops at --max_steps; it saves whenever the steps cross a multiple of save_interval (RL
    takes several steps per batch) and at the last step, only at the last with save_interval 0; a resumed run
    continues at the saved step and data position; from_flags maps the common flags."""
    import argparse
    from itertools import islice

    from helpers import TINY_CFG, tiny_model
    from model.model_minimind import MiniMindConfig
    from trainer.trainer_utils import Batches, DistState, TrainRun, add_common_args, make_optimizer, mixed_precision

    data = [{"x": torch.tensor([i])} for i in range(12)]
    collate = lambda items: {"x": torch.cat([it["x"] for it in items])}  # noqa: E731

    def start(steps_per_batch=1, **fields):
        model = tiny_model()
        batches = Batches(data, collate, DistState(), batch_size=2, epochs=1, seed=0)  # 6 batches
        run = TrainRun("stage", model.config, DistState(), total_steps=batches.total_steps * steps_per_batch,
                       save_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ck", learning_rate=1.0,
                       steps_per_batch=steps_per_batch, **fields)
        optimizer = make_optimizer(model.parameters(), 1.0, 0.0, "cpu")
        dtype, _, scaler = mixed_precision("float32", "cpu")
        step = run.resume(model, optimizer, scaler, batches)
        return run, batches, optimizer, scaler, model, step, run.open_logger(step, batches, dtype)

    def train(run, batches, optimizer, scaler, model, step, logger, steps_per_batch):
        saved = []
        for _ in islice(batches, run.batches_left(step)):
            step = min(step + steps_per_batch, run.last_step)
            logger.log(step, {"lr": run.lr(step)}, epoch=batches.current_epoch)
            saved.append((step, run.maybe_save(step, model, optimizer, scaler, batches)))
        run.finish(step)
        return saved

    run, *rest = start(steps_per_batch=2, max_steps=9, save_interval=3)
    assert (run.total_steps, run.last_step, run.batches_left(0)) == (12, 9, 5)
    assert run.lr(0) == pytest.approx(1.0) and run.lr(12) == pytest.approx(0.1)
    assert [run.save_due(s) for s in (4, 4, 8, 9)] == [True, True, False, True]  # a pure check: ask it twice
    assert train(run, *rest, 2) == [(2, False), (4, True), (6, True), (8, False), (9, True)]
    assert run.weight_file == tmp_path / "out" / "stage_64.pth" and run.weight_file.is_file()
    assert torch.load(tmp_path / "ck" / "stage_64_resume.pth", weights_only=True)["step"] == 9

    run, *rest = start(steps_per_batch=2, save_interval=3, from_resume=True)
    assert rest[-2] == 9 and rest[0].state_dict() == {"epoch": 0, "consumed": 10}
    # max_steps cut the 5th batch's steps: the resumed run takes the 6th and last batch and saves at its end
    assert (run.total_steps, run.last_step) == (12, 11) and train(run, *rest, 2) == [(11, True)]
    run, *rest = start(save_interval=0)
    assert [s for s, due in train(run, *rest, 1) if due] == [6]  # 0: only at the end (it used to divide by 0)

    parser = argparse.ArgumentParser()
    add_common_args(parser, stage="x", data_path="d.jsonl")
    args = parser.parse_args(["--save_interval", "0", "--max_steps", "5", "--use_wandb", "--from_resume", "1"])
    batches = Batches(data, collate, DistState(), batch_size=2, epochs=1, seed=0)
    run = TrainRun.from_flags(args, MiniMindConfig(**TINY_CFG), DistState(), batches, steps_per_batch=3)
    assert (run.name, run.save_interval, run.max_steps, run.from_resume, run.steps_per_batch) == ("x", 0, 5, True, 3)
    assert (run.total_steps, run.last_step) == (18, 5)
    assert run.wandb_project == "MiniMind-x" and run.flags["data_path"].endswith("d.jsonl")
