"""scripts/benchmark.py --smoke: every stage runs in both modes and the JSON report is complete and sane.

No timing assertions (CI machines are noisy); only structure, positivity and the padding invariant that packing
and dynamic padding can only remove padding.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import tiny_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN_STAGES = ("pretrain", "sft", "dpo", "grpo")
DECODE_STAGES = ("decode_b1", "decode_b8", "prefill_64")  # --smoke uses --prefill_len 64
POSITIVE = ("real_tokens_per_s", "padded_tokens_per_s", "step_time_ms", "model_tflops", "params_m")

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process rows: see conftest.one_thread


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false",
               MINIMIND_CACHE=str(tmp / "cache"))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--smoke", "--compare",
                           "--device", "cpu", "--output", str(out)],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, "no bar chart written"
    return json.loads(out.read_text()), proc.stdout


def test_every_stage_and_mode_has_a_row_with_positive_numbers(report):
    data, _ = report
    rows = {(r["stage"], r["mode"]): r for r in data["rows"]}
    for stage in TRAIN_STAGES + DECODE_STAGES:
        for mode in ("optimised", "naive"):
            row = rows.get((stage, mode))
            assert row is not None, f"no row for {stage}/{mode}; got {sorted(rows)}"
            assert row["config"] == "tiny"
            for key in POSITIVE:
                assert isinstance(row[key], (int, float)) and math.isfinite(row[key]) and row[key] > 0, (
                    f"{stage}/{mode}: {key} = {row[key]!r}")
            assert row["real_tokens_per_s"] <= row["padded_tokens_per_s"] * (1 + 1e-9)
            assert 0.0 <= row["padding_frac"] < 1.0
            assert row["peak_mem_mb"] >= 0
            assert row["mfu"] is None, "MFU is only defined on CUDA"
            assert row["steps"] >= 1


def test_packing_and_dynamic_padding_never_pad_more_than_naive(report):
    data, _ = report
    rows = {(r["stage"], r["mode"]): r for r in data["rows"]}
    assert rows[("pretrain", "optimised")]["padding_frac"] == 0.0, "packed blocks hold no padding"
    assert rows[("pretrain", "naive")]["padding_frac"] > 0.0, "pad-to-max_seq_len must pad short documents"
    for stage in ("pretrain", "sft", "dpo"):
        assert rows[(stage, "naive")]["padding_frac"] >= rows[(stage, "optimised")]["padding_frac"], stage
        # naive rows are padded to --max_seq_len (128 in --smoke); optimised rows only to the batch's longest
        assert rows[(stage, "naive")]["seq_len"] == 128
        assert rows[(stage, "optimised")]["seq_len"] <= 128


def test_comparison_ratios_exist_and_match_rows(report):
    data, stdout = report
    rows = {(r["stage"], r["mode"]): r for r in data["rows"]}
    compared = {c["stage"]: c for c in data["comparison"]}
    assert set(compared) == set(TRAIN_STAGES + DECODE_STAGES)
    for stage, c in compared.items():
        opt, naive = rows[(stage, "optimised")], rows[(stage, "naive")]
        assert c["speedup"] == pytest.approx(opt["real_tokens_per_s"] / naive["real_tokens_per_s"])
        assert opt["speedup"] == c["speedup"] and "mem_ratio" in opt and "step_time_ratio" in c
    assert "speedup" in stdout and "real tok/s" in stdout  # the printed table carries the ratio column


def test_meta_says_what_was_measured(report):
    data, _ = report
    meta = data["meta"]
    from model.runtime import cpu_has_native_bf16
    assert meta["device"] == "cpu"
    # --dtype auto: bf16 on a CPU with native bf16, else fp32; the naive rows are fp32 as in the original
    assert meta["dtype"] == ("bfloat16" if cpu_has_native_bf16() else "float32")
    for row in data["rows"]:
        assert row["dtype"] == (meta["dtype"] if row["mode"] == "optimised" else "float32"), row
    assert "dataset/sample" in meta["data"].replace("\\", "/")
    assert meta["memory_kind"].startswith("cpu_")
    assert meta["peak_tflops"] is None
    assert meta["clock"] == "wall" and len(meta["load_average"]) == 3  # what a noisy number was measured under
    assert {"real_tokens_per_s", "padded_tokens_per_s", "model_tflops", "mfu"} <= set(meta["definitions"])


def test_decode_rows_carry_their_roofline(report):
    """Every decode row: the weight bytes one step reads (all parameters once, the tied embedding once, in the row's
    dtype), the bandwidth probed beside its runs, the roofline batch x bandwidth / bytes and the fraction of it that
    the decode steps reached; the summary puts batch 8 against one request at a time, ours and the original's."""
    from scripts.benchmark import build_model, flops_params
    data, stdout = report
    params = flops_params(build_model("tiny", 0, "cpu"))["flops_n"]
    rows = {(r["stage"], r["mode"]): r for r in data["rows"]}
    for stage, batch in (("decode_b1", 1), ("decode_b8", 8)):
        for mode in ("optimised", "naive"):
            r = rows[(stage, mode)]
            size = torch.finfo(getattr(torch, r["dtype"])).bits // 8
            assert r["weight_mb_per_step"] == pytest.approx(params * size / 1e6)
            assert r["mem_bandwidth_gbs"] > 0 and math.isfinite(r["mem_bandwidth_gbs"])
            assert r["roofline_tokens_per_s"] == pytest.approx(
                batch * r["mem_bandwidth_gbs"] * 1e9 / (r["weight_mb_per_step"] * 1e6))
            assert r["median_tokens_per_s"] == pytest.approx(batch * 1000 / r["median_step_time_ms"])
            assert r["decode_tokens_per_s"] > 0 and math.isfinite(r["decode_tokens_per_s"])
            assert r["roofline_frac"] == pytest.approx(r["decode_tokens_per_s"] / r["roofline_tokens_per_s"])
    summary = {d["mode"]: d for d in data["decode"]}
    assert set(summary) == {"optimised", "naive"}
    for mode, d in summary.items():
        b1, b8 = rows[("decode_b1", mode)], rows[("decode_b8", mode)]
        assert d["b1_roofline_frac"] == b1["roofline_frac"] and d["b8_roofline_frac"] == b8["roofline_frac"]
        assert d["b8_vs_b1"] == pytest.approx(b8["decode_tokens_per_s"] / b1["decode_tokens_per_s"])
    assert summary["optimised"]["b8_vs_naive_b1"] == pytest.approx(
        rows[("decode_b8", "optimised")]["decode_tokens_per_s"] / rows[("decode_b1", "naive")]["decode_tokens_per_s"])
    assert summary["naive"]["b8_vs_naive_b1"] is None
    assert "roofline" in stdout and "b8/orig b1" in stdout  # the printed decode table
    assert "roofline_frac" in data["meta"]["definitions"]


def test_decode_summary_on_hand_rows():
    """The summary's arithmetic on made-up rows, and a config measured in one mode only has no cross ratio."""
    from scripts.benchmark import decode_summary, decode_table

    def row(cfg, stage, mode, tps, roof):
        return {"config": cfg, "stage": stage, "mode": mode, "dtype": "float32", "decode_tokens_per_s": tps,
                "roofline_tokens_per_s": roof, "roofline_frac": tps / roof, "mem_bandwidth_gbs": 10.0,
                "weight_mb_per_step": 100.0}

    rows = [row("a", "decode_b1", "optimised", 80, 100), row("a", "decode_b8", "optimised", 400, 800),
            row("a", "decode_b1", "naive", 50, 100), row("a", "decode_b8", "naive", 200, 800),
            row("b", "decode_b1", "optimised", 10, 20), row("b", "decode_b8", "optimised", 60, 160),
            row("a", "prefill_64", "optimised", 1, 1)]
    out = {(d["config"], d["mode"]): d for d in decode_summary(rows)}
    assert set(out) == {("a", "optimised"), ("a", "naive"), ("b", "optimised")}
    assert out[("a", "optimised")]["b8_vs_b1"] == 5.0 and out[("a", "optimised")]["b8_vs_naive_b1"] == 8.0
    assert out[("a", "optimised")]["b1_roofline_frac"] == 0.8 and out[("a", "optimised")]["b8_roofline_frac"] == 0.5
    assert out[("b", "optimised")]["b8_vs_naive_b1"] is None and out[("b", "optimised")]["b8_vs_b1"] == 6.0
    text = decode_table(decode_summary(rows))
    assert "80%" in text and "8.00x" in text and "6.00x" in text


def test_memory_bandwidth_probe_is_a_positive_rate():
    from scripts.benchmark import memory_bandwidth
    bw = memory_bandwidth("cpu", 4 << 20, runs=2)
    assert math.isfinite(bw) and 1e8 < bw < 1e13  # bytes/s: between 0.1 GB/s and 10 TB/s


def test_bad_arguments_fail_with_a_clear_message(capsys):
    from scripts.benchmark import parse_args
    for argv, msg in ((["--configs", "26m,huge"], "unknown config 'huge'"),
                      (["--stages", "pretrain,rlhf"], "unknown stage 'rlhf'"),
                      (["--naive", "--compare"], "exclude each other"),
                      (["--num_generations", "1"], "--num_generations must be >= 2"),
                      (["--clock", "cpu"], "--clock cpu needs --threads 1"),
                      (["--decode_tokens", "1"], "--decode_tokens must be >= 2")):
        with pytest.raises(SystemExit) as e:
            parse_args(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err, argv
    args = parse_args(["--smoke"])
    assert args.configs == ["tiny"] and args.steps == 2 and args.warmup == 1 and args.compare
    assert args.stages == ["pretrain", "sft", "dpo", "grpo", "decode"]
    args = parse_args(["--configs", "26m,moe", "--steps", "5"])
    assert args.configs == ["26m", "moe"] and args.steps == 5 and args.max_seq_len == 512 and not args.compare
    # --preset names released shapes; alone it replaces the default 26m, beside --configs it adds to them
    assert parse_args(["--preset", "minimind2-small,minimind3"]).configs == ["minimind2-small", "minimind3"]
    assert parse_args(["--configs", "26m", "--preset", "minimind3-moe"]).configs == ["26m", "minimind3-moe"]
    with pytest.raises(SystemExit):
        parse_args(["--preset", "minimind4"])
    assert "unknown preset 'minimind4'" in capsys.readouterr().err


def test_configs_are_the_released_shapes():
    """The old MiniMind2 names are the presets; minimind-3 rows build the preset's architecture."""
    from model.model_minimind import MiniMindConfig
    from scripts.benchmark import model_config
    for old, preset in (("26m", "minimind2-small"), ("104m", "minimind2"), ("moe", "minimind2-moe")):
        assert model_config(old).to_dict() == MiniMindConfig.from_preset(preset).to_dict()
    cfg = model_config("minimind3-moe")
    assert cfg.qk_norm and cfg.use_moe and cfg.num_experts_per_tok == 1 and cfg.n_shared_experts == 0
    tiny3 = model_config("tiny3")
    assert tiny3.qk_norm and tiny3.hidden_size == 64 and tiny3.intermediate_size == 256 and not tiny3.use_moe


def test_naive_baselines_compute_the_same_thing_as_the_optimised_paths():
    """The naive mode must do the same work the slow way, or its timings compare nothing."""
    from model.generation import generate
    from scripts.benchmark import naive_generate, naive_sequence_logps, naive_token_logps
    from trainer.rl_utils import position_ids_from_mask, token_logps
    from trainer.train_dpo import sequence_logps

    model = tiny_model(0).eval()
    prompts = [[1, 5, 9, 200, 301], [1, 77, 3000], [1, 42, 43, 44, 45, 46, 47]]  # ragged: left padding
    opt = generate(model, prompts, max_new_tokens=6, temperature=1.0, eos_token_id=-1,
                   generator=torch.Generator().manual_seed(3))
    seq, attn, resp_mask, plen = naive_generate(model, prompts, 6, eos_token_id=-1,
                                                generator=torch.Generator().manual_seed(3))
    assert plen == opt.prompt_len and torch.equal(seq, opt.sequences)
    assert torch.equal(attn, opt.attention_mask) and torch.equal(resp_mask, opt.response_mask)

    seq, attn = seq.clone(), attn.clone()  # out of inference mode
    pos = position_ids_from_mask(attn)
    naive_lp, _ = naive_token_logps(model, seq, attn, pos, 6)
    torch.testing.assert_close(naive_lp, token_logps(model, seq, attn, pos, 6), rtol=1e-4, atol=1e-4)

    labels = seq.clone()
    labels[:, :plen] = -100
    logits = model(input_ids=seq).logits
    torch.testing.assert_close(naive_sequence_logps(logits, labels), sequence_logps(logits, labels),
                               rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("cfg_name", ["tiny3-moe", "tiny-moe"])
def test_naive_models_route_moe_the_original_way_per_instance(cfg_name, monkeypatch):
    """The naive baseline's MoE layers loop over experts, bound on the instance: same numbers as the vectorised
    dispatch, the class untouched, and a deepcopy (the DPO / GRPO reference) routes through its own experts."""
    import copy
    from model.model_minimind import MOEFeedForward
    from scripts import benchmark
    from scripts.benchmark import build_model, dispatch_reference, flops_params

    # MiniMind2's MoE (top-2 and a shared expert) at the tiny size, beside minimind-3's (top-1, no shared expert)
    monkeypatch.setitem(benchmark.CONFIGS, "tiny-moe", ("minimind2-moe", benchmark.TINY))
    vectorised = MOEFeedForward.__dict__["dispatch"]
    fast, slow = build_model(cfg_name, 0, "cpu").eval(), build_model(cfg_name, 0, "cpu", naive=True).eval()
    layers = [m for m in slow.modules() if isinstance(m, MOEFeedForward)]
    assert len(layers) == 2 and all(m.dispatch.__func__ is dispatch_reference and m.dispatch.__self__ is m
                                    for m in layers)
    assert not any("dispatch" in vars(m) for m in fast.modules())
    assert MOEFeedForward.__dict__["dispatch"] is vectorised
    x = torch.randint(3, 6000, (2, 9))
    torch.testing.assert_close(fast(input_ids=x).logits, slow(input_ids=x).logits, rtol=1e-5, atol=1e-5)
    ref = copy.deepcopy(slow)
    assert all(m.dispatch.__self__ is m for m in ref.modules() if isinstance(m, MOEFeedForward))
    # FLOP count: only shared + top-k routed experts are active per token
    info = flops_params(slow)
    cfg = slow.config
    per_expert = sum(p.numel() for p in slow.model.layers[0].mlp.experts[0].parameters())
    inactive = cfg.num_hidden_layers * (cfg.n_routed_experts - cfg.num_experts_per_tok) * per_expert
    assert info["flops_n"] == sum(p.numel() for p in slow.parameters()) - inactive


def test_naive_rows_leave_the_moe_class_untouched(monkeypatch):
    """Every naive MoE row (training with a reference copy, GRPO, decoding) runs the per-expert loop while
    MOEFeedForward.dispatch stays the vectorised one throughout; the optimised rows never run the loop."""
    from model.checkpoint import load_tokenizer
    from model.model_minimind import MOEFeedForward
    from scripts import benchmark

    vectorised, reference = MOEFeedForward.__dict__["dispatch"], benchmark.dispatch_reference
    calls = {"naive": 0}

    def spy(self, x, topk_idx, topk_weight):  # bound by use_reference_dispatch, which looks the name up
        assert MOEFeedForward.__dict__["dispatch"] is vectorised, "the class was patched"
        calls["naive"] += 1
        return reference(self, x, topk_idx, topk_weight)

    monkeypatch.setattr(benchmark, "dispatch_reference", spy)
    args = benchmark.parse_args(["--smoke", "--configs", "tiny3-moe", "--steps", "1", "--decode_tokens", "4"])
    paths, _ = benchmark.resolve_data(args)
    tok = load_tokenizer()
    bench = benchmark.Bench(args, tok, benchmark.Data(args, tok, paths), "cpu", torch.float32, None)
    torch.manual_seed(0)
    for naive in (False, True):
        before = calls["naive"]
        bench.train_row("tiny3-moe", "dpo", naive)
        bench.grpo_row("tiny3-moe", naive)
        bench.decode_rows("tiny3-moe", naive)
        assert (calls["naive"] > before) == naive, calls
        assert MOEFeedForward.__dict__["dispatch"] is vectorised
    rows = {(r["stage"], r["mode"]): r for r in bench.rows}
    assert {s for s, _ in rows} == {"dpo", "grpo", "decode_b1", "decode_b8", "prefill_64"}
    assert all(r["qk_norm"] and r["use_moe"] and r["config"] == "tiny3-moe" for r in bench.rows)


def test_rollout_stage_times_batched_multi_turn_episodes_against_one_at_a_time(tmp_path):
    """--stages rollout: both modes play the same multi-turn tool episodes (a tool result after every turn but the
    last), the report says how many turns and inserted tokens they had. Speed claims are the README's, not here."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--smoke", "--stages", "rollout",
                           "--rollout_tasks", "2", "--num_generations", "2", "--rollout_turns", "3",
                           "--max_gen_len", "64", "--decode_runs", "1", "--warmup", "0", "--output", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"optimised", "naive"}
    for r in rows.values():
        assert r["stage"] == "rollout" and r["episodes"] == 4 and r["real_tokens_per_s"] > 0
        assert 1 < r["turns_per_episode"] <= 3 and r["inserted_tokens"] > 0  # tool results were appended
