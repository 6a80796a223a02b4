"""Tests for scripts/report.py (curves + report card), scripts/data_stats.py and scripts/download_data.py."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import data_stats as ds  # noqa: E402
from scripts import download_data as dd  # noqa: E402
from scripts import report  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tokenizer():
    return ds.load_tokenizer(ROOT / "model")


# ================================================================================================================
# report.py
# ================================================================================================================
def synthetic_log(path, steps, loss0, t0=1_000_000.0, extra=None):
    rows = []
    for i, s in enumerate(steps):
        row = {"step": s, "epoch": 1, "lr": 1e-3 * (1 - s / 200), "grad_norm": 1.0 / (1 + i),
               "tokens_per_s": 1000.0 + i, "loss": loss0 * math.exp(-s / 100), "time": t0 + 2.0 * s}
        row.update(extra(s) if extra else {})
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_report_writes_curves_and_report_card(tmp_path):
    logs = tmp_path / "out" / "logs"
    synthetic_log(logs / "pretrain_64.jsonl", [1, 10, 20, 30, 40], 8.0)
    synthetic_log(logs / "full_sft_64.jsonl", [1, 5, 10], 4.0, extra=lambda s: {"aux_loss": 0.01 * s})
    with open(logs / "pretrain_64.jsonl", "a") as f:  # a crash mid-write leaves a torn last line
        f.write('{"step": 50, "loss": 1.0, "ti')
    # A resume checkpoint with the run's flags and weights (tied lm_head counted once).
    ck_dir = tmp_path / "checkpoints"
    ck_dir.mkdir()
    emb = torch.zeros(10, 4)
    torch.save({"model": {"model.embed_tokens.weight": emb, "lm_head.weight": emb, "model.norm.weight":
                          torch.ones(4)}, "args": {"hidden_size": 64, "learning_rate": 5e-4, "data_path": "x.jsonl"},
                "step": 40}, ck_dir / "pretrain_64_resume.pth")
    evals = tmp_path / "mc.json"
    evals.write_text(json.dumps({"task": "mc", "format": "jsonl", "model": "minimind-full_sft_64", "data": "d.jsonl",
                                 "shots": 0, "overall": {"n": 44, "correct": 13, "acc": 13 / 44, "chance": 0.25},
                                 "subjects": [{"subject": "eval_mc", "n": 44, "acc": 13 / 44, "chance": 0.25}]}))
    ppl = tmp_path / "ppl.json"
    ppl.write_text(json.dumps({"task": "ppl", "model": "m", "data": "held.jsonl", "ppl": 123.456, "tokens": 1000,
                               "documents": 10, "max_seq_len": 512, "stride": 256}))
    out = tmp_path / "rep"
    assert report.main([str(logs), "--out_dir", str(out), "--checkpoint_dir", str(ck_dir), "--eval", str(evals),
                        str(ppl), "--per_metric", "--smooth", "0.5", "--title", "Tiny run"]) == 0
    for name in ("curves", "loss", "lr", "tokens_per_s", "grad_norm", "aux_loss"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and 3_000 < png.stat().st_size < 150_000, name
    md = (out / "report.md").read_text()
    assert md.startswith("# Tiny run")
    assert "![training curves](curves.png)" in md
    pre = next(l for l in md.splitlines() if l.startswith("| pretrain_64 |"))
    cells = [c.strip() for c in pre.strip("|").split("|")]
    assert cells[1] == "40"                                    # steps: the torn line was skipped
    assert cells[3] == "0h01m20s"                               # wall time: 78 s logged + 1 step extrapolated
    assert cells[4] == "1,002"                                  # mean tokens/s without the first (warm-up) row
    assert cells[7] == f"{8.0 * math.exp(-0.4):.4f}"             # final loss
    assert "| pretrain_64 | 44 (0.00M) |" in md                  # 10x4 embedding (tied) + 4 norm
    assert "--learning_rate" in md and "0.0005" in md
    assert "accuracy **0.2955** (13/44) vs chance 0.2500" in md and "**123.456**" in md


def test_report_metrics_order_and_ema():
    runs = {"a": [{"step": 1, "loss": 2.0, "lr": 1.0, "zeta": 1, "kl": 0.1, "time": 0, "epoch": 1}]}
    assert report.metric_names(runs) == ["loss", "lr", "kl", "zeta"]
    assert report.ema([3.0, 3.0, 3.0], 0.9) == pytest.approx([3.0, 3.0, 3.0])  # bias-corrected: no drag to 0


def test_report_errors_clearly(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "logs").mkdir()
    assert report.main([str(tmp_path / "logs")]) == 2
    assert "no metrics logs" in capsys.readouterr().err


# ================================================================================================================
# data_stats.py
# ================================================================================================================
def test_padding_waste_and_recommendation_on_hand_lengths():
    lengths = np.array([10, 20, 30, 100])
    w = ds.padding_waste(lengths, max_len=40, batch_size=4)
    # pad_to_max: mean(min(len, 40)) / 40 = (10 + 20 + 30 + 40) / 4 / 40
    assert w["pad_to_max"] == pytest.approx(1 - 25 / 40)
    assert w["dynamic"] == pytest.approx(1 - 100 / 160)  # one batch of 4 padded to 40
    g = ds.padding_waste(lengths, max_len=40, batch_size=2)
    assert g["grouped"] == pytest.approx(1 - 100 / (2 * 20 + 2 * 40))  # sorted: [10, 20] -> 20, [30, 40] -> 40
    w1 = ds.padding_waste(lengths, max_len=40, batch_size=1)
    assert w1["dynamic"] == 0.0  # batches of one are never padded
    # DPO: chosen and rejected of a record share a batch
    pairs = ds.padding_waste(np.array([10, 30, 20, 20]), max_len=100, batch_size=1, rows_per_record=2)
    assert pairs["dynamic"] == pytest.approx(1 - 80 / 100)
    lengths = np.arange(1, 101)
    assert ds.recommend_max_seq_len(lengths, 0.05, 16) == 96  # p95 = 95 -> next multiple of 16
    assert ds.recommend_max_seq_len(lengths, 0.05, 64) == 128
    assert ds.recommend_max_seq_len(lengths, 0.0, 1) == 100
    assert ds.truncated_fraction(lengths, 96) == pytest.approx(0.04)


def test_data_stats_counts_bad_lines_and_renders_like_the_datasets(tokenizer, tmp_path):
    from dataset.lm_dataset import PretrainDataset, SFTDataset
    sft = tmp_path / "sft.jsonl"
    good = {"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！我是助手。"}]}
    sft.write_text(json.dumps(good, ensure_ascii=False) + "\n{not json\n"
                   + json.dumps({"conversations": [{"role": "user", "content": "hi"}]}) + "\n\n"
                   + json.dumps(good, ensure_ascii=False) + "\n", encoding="utf-8")
    s = ds.describe_file(sft, tokenizer)
    assert s["kind"] == "sft" and s["records"] == 2 and s["bad_lines"] == 2
    assert s["errors"][0].startswith(f"{sft}:2: invalid JSON")
    assert s["errors"][1] == f"{sft}:3: conversation has no assistant turn to learn from"
    # Token counts equal what the training dataset produces for the same record (no truncation).
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps(good, ensure_ascii=False) + "\n", encoding="utf-8")
    assert s["max"] == len(SFTDataset(clean, tokenizer, max_length=10_000, )[0]["input_ids"])
    pre = tmp_path / "pre.jsonl"
    pre.write_text(json.dumps({"text": "The quick brown fox."}) + "\n", encoding="utf-8")
    p = ds.describe_file(pre, tokenizer)
    assert p["kind"] == "pretrain" and p["max"] == len(PretrainDataset(pre, tokenizer, 10_000)[0]["input_ids"])
    assert p["chars_per_token"] == pytest.approx(len("The quick brown fox.") / (p["max"] - 2))
    # Kind detection: DPO, RLAIF placeholder conversations, GSM8K-style questions
    assert ds.detect_kind([{"chosen": [], "rejected": []}]) == "dpo"
    assert ds.detect_kind([{"conversations": [{"role": "user", "content": "q"},
                                              {"role": "assistant", "content": "无"}]}]) == "rlaif"
    assert ds.detect_kind([{"question": "1+1", "answer": "#### 2"}]) == "rlaif"
    assert ds.detect_kind([{"foo": 1}]) is None
    assert ds.main([str(tmp_path / "missing.jsonl")]) == 2


def test_data_stats_on_real_mini_data(tmp_path, capsys):
    sft = DATA / "mini" / "sft.jsonl"
    if not sft.is_file():
        pytest.skip(f"{DATA} not found: real mini data for the data_stats test")
    plot, out = tmp_path / "hist.png", tmp_path / "stats.json"
    assert ds.main([str(sft), "--plot", str(plot), "--json", str(out), "--multiple", "16"]) == 0
    text = capsys.readouterr().out
    s = json.loads(out.read_text())
    assert s["kind"] == "sft" and s["records"] == 300 and s["bad_lines"] == 0
    p = s["percentiles"]
    assert s["min"] <= p["p50"] <= p["p90"] <= p["p95"] <= p["p99"] <= s["max"]
    assert s["recommended_max_seq_len"] % 16 == 0 and p["p95"] <= s["recommended_max_seq_len"] < p["p95"] + 16
    assert s["truncated_at_max_seq_len"] <= 0.05
    assert 0 <= s["padding"]["grouped"] <= s["padding"]["dynamic"] <= s["padding"]["pad_to_max"] < 1
    assert 1.0 < s["chars_per_token"] < 5.0
    assert "recommended --max_seq_len" in text
    assert plot.read_bytes()[:8] == PNG and plot.stat().st_size < 150_000
    # --sample estimates from a reservoir sample but still counts every record
    est = ds.describe_file(sft, ds.load_tokenizer(ROOT / "model"), sample=50)
    assert est["records"] == 300 and est["sampled"] == 50 and est["rows"] == 300


# ================================================================================================================
# download_data.py
# ================================================================================================================
def test_download_names_map_to_upstream_files(tmp_path):
    assert dd.resolve_names(["pretrain_hq", "sft_mini_512.jsonl,dpo", "rlaif_mini", "dpo"]) == [
        "pretrain_hq", "sft_mini_512", "dpo", "rlaif-mini"]
    assert dd.target_path("r1_mix_1024", tmp_path) == tmp_path / "r1_mix_1024.jsonl"
    assert {dd.DATASETS[n][0] for n in dd.DATASETS} >= {"pretrain_hq.jsonl", "sft_512.jsonl", "sft_1024.jsonl",
                                                         "sft_2048.jsonl", "lora_medical.jsonl",
                                                         "lora_identity.jsonl", "rlaif-mini.jsonl"}
    assert dd.REPOS == {"modelscope": "gongjy/minimind_dataset", "huggingface": "jingyaogong/minimind_dataset"}
    with pytest.raises(dd.DownloadError, match="unknown data set 'sft_4096'"):
        dd.resolve_names(["sft_4096"])


def test_download_list_and_argument_errors(capsys):
    assert dd.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "sft_mini_512.jsonl" in out and "gongjy/minimind_dataset" in out
    assert dd.main(["--names", "nope"]) == 2 and "unknown data set" in capsys.readouterr().err
    assert dd.main([]) == 2 and "--names" in capsys.readouterr().err


def test_download_skips_existing_and_fetches_into_out_dir(tmp_path, monkeypatch):
    calls = []

    def fake_fetch(source, filename, out_dir, force=False):
        calls.append((source, filename))
        (out_dir / filename).write_text("{}\n")
        return out_dir / filename

    monkeypatch.setattr(dd, "fetch", fake_fetch)
    (tmp_path / "dpo.jsonl").write_text("{}\n")
    assert dd.main(["--names", "dpo", "lora_identity", "--out_dir", str(tmp_path), "--source", "huggingface"]) == 0
    assert calls == [("huggingface", "lora_identity.jsonl")]  # dpo already there: skipped
    assert dd.main(["--names", "dpo", "--out_dir", str(tmp_path), "--force"]) == 0
    assert calls[-1] == ("modelscope", "dpo.jsonl")


@pytest.mark.parametrize("source", ["huggingface", "modelscope"])
def test_download_offline_gives_one_line_with_mirror_hint(tmp_path, monkeypatch, capsys, source):
    class ConnectError(Exception):  # stands in for httpx / requests connection errors (matched by class name)
        pass

    def offline(*args, **kwargs):
        try:
            raise ConnectError("[Errno -3] Temporary failure in name resolution")
        except ConnectError as e:
            raise RuntimeError("download failed") from e  # the client wraps it

    monkeypatch.setattr(dd, "fetch", offline)
    assert dd.main(["--names", "dpo", "--out_dir", str(tmp_path), "--source", source]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: cannot reach") and "Traceback" not in err
    assert "HF_ENDPOINT=https://hf-mirror.com" in err
    # Anything that is not a network problem is a bug and keeps its traceback.
    monkeypatch.setattr(dd, "fetch", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        dd.main(["--names", "dpo", "--out_dir", str(tmp_path)])
    assert dd.is_connection_error(ConnectionResetError()) and not dd.is_connection_error(ValueError())


def test_download_with_the_real_hub_client_offline(tmp_path):
    """huggingface_hub in offline mode (no network is touched) fails with its own error class: still one line."""
    pytest.importorskip("huggingface_hub")
    import os
    import subprocess
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "download_data.py"), "--names", "lora_identity",
                           "--source", "huggingface", "--out_dir", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: cannot reach huggingface") and "hf-mirror.com" in proc.stderr
    assert not (tmp_path / "d" / "lora_identity.jsonl").exists()
