"""minimind-3 through every stage script, as a user runs them: pretrain -> SFT -> LoRA / DPO / GRPO on a tiny
minimind-3 shape (`--preset minimind3` with the TINY size flags, which override the preset's size), the MoE
variant (`--preset minimind3-moe`) for pretrain (with exact resume) and SFT, then chat (eval_llm.py), serve (the
OpenAI server app in-process) and export (torch2transformers -> Qwen3 / Qwen3-MoE -> hf2torch) of the trained
weights, and an SFT run with upstream's minimind-3 tokenizer (skipped when ../shared/data is absent).

MiniMind2 runs the same scripts in test_training.py, test_lora.py, test_dpo.py and test_rl.py; the minimind-3
architecture itself (parity with transformers' Qwen3, keys, counts, exports of random weights) is covered by
test_minimind3.py and test_convert.py. Here the point is that the stage scripts, resume and the front ends work
with the new architecture end to end, with upstream's file names (`{stage}_{hidden}[_moe].pth`).

Each stage runs in its own folder, started from the previous stage's .pth (`--from_weight PATH`); independent
runs are started side by side (two cores).
"""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import SAMPLE, SHARED, TINY_CFG, finish, run_trainer, start_trainer, train_log  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from test_eval_llm import greedy_answer  # noqa: E402

M3, M3_MOE = ["--preset", "minimind3"], ["--preset", "minimind3-moe"]  # + TINY from run_trainer's flags
MM3_TOKENIZER = SHARED / "reference" / "minimind3_tokenizer"
EVAL_TINY = [f"--{k}={v}" for k, v in TINY_CFG.items()] + ["--device", "cpu", "--dtype", "float32"]

pytestmark = pytest.mark.usefixtures("one_thread")


def m3_config(use_moe=False) -> MiniMindConfig:
    return MiniMindConfig.from_preset("minimind3-moe" if use_moe else "minimind3", **TINY_CFG)


def load_m3(path, use_moe=False) -> MiniMindForCausalLM:
    """A saved (fp16) stage output as an fp32 minimind-3 model, loaded strictly."""
    model = MiniMindForCausalLM(m3_config(use_moe))
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.float().eval()


def assert_minimind3_file(path, use_moe=False):
    """The file holds exactly a tiny minimind-3's keys and shapes (QK-norm over head_dim, pi*hidden MLP, MoE
    without a shared expert), in half precision as a stage releases it."""
    sd = torch.load(path, weights_only=True)
    want = MiniMindForCausalLM(m3_config(use_moe)).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in want.items()}
    assert sd["model.layers.0.self_attn.q_norm.weight"].shape == (16,)  # head_dim = 64 / 4
    assert "model.layers.1.self_attn.k_norm.weight" in sd
    if use_moe:
        assert sd["model.layers.0.mlp.gate.weight"].shape == (4, 64)
        assert sd["model.layers.0.mlp.experts.3.gate_proj.weight"].shape == (256, 64)  # ceil(64 pi / 64) * 64
        assert not any("shared_experts" in k for k in sd)
    else:
        assert sd["model.layers.0.mlp.gate_proj.weight"].shape == (256, 64)  # MiniMind2's rule would give 192
    assert sd["model.embed_tokens.weight"].dtype == torch.float16
    return sd


def ok(proc):
    """A run started side by side (finish(check=False)) must have succeeded; its output ends if not."""
    assert proc.returncode == 0, f"{proc.args}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def mean(xs):
    return sum(xs) / len(xs)


def losses(folder, name):
    rows = train_log(folder / "out", name)
    assert all(math.isfinite(r["loss"]) for r in rows), rows
    return [r["loss"] for r in rows]


# ================================================================================================================
# Runs (module fixtures: each stage once, checked by the tests below)
# ================================================================================================================
PRETRAIN = ["--data_path", SAMPLE / "pretrain.jsonl", "--batch_size", 8, "--accumulation_steps", 1,
            "--max_seq_len", 128, "--learning_rate", 3e-3, "--log_interval", 1]
SFT = ["--data_path", SAMPLE / "sft.jsonl", "--batch_size", 8, "--accumulation_steps", 1, "--max_seq_len", 128,
       "--learning_rate", 1e-3, "--log_interval", 1, "--max_steps", 12]
# Resume: micro-batch 4, accumulation 2, checkpoints every 2 steps; stopped after step 3, so the resume starts
# from the step-3 checkpoint written at the stop, mid-way between two periodic saves.
RESUME = ["--data_path", SAMPLE / "pretrain.jsonl", "--batch_size", 4, "--accumulation_steps", 2,
          "--max_seq_len", 64, "--learning_rate", 1e-3, "--log_interval", 1, "--save_interval", 2]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("m3")


@pytest.fixture(scope="module")
def pretrained(root):
    """Dense pretraining (30 steps) and the MoE one, run uninterrupted and stopped at step 3 side by side."""
    procs = {"dense": start_trainer("train_pretrain.py", *M3, *PRETRAIN, "--max_steps", 30, tmp=root / "pretrain"),
             "moe": start_trainer("train_pretrain.py", *M3_MOE, *RESUME, "--max_steps", 6, tmp=root / "moe"),
             "moe_cut": start_trainer("train_pretrain.py", *M3_MOE, *RESUME, "--max_steps", 3,
                                      tmp=root / "moe_cut")}
    return {k: finish(p, check=False) for k, p in procs.items()}


@pytest.fixture(scope="module")
def sft(root, pretrained):
    """SFT of the dense and the MoE pretraining outputs, side by side."""
    ok(pretrained["dense"]), ok(pretrained["moe"])
    procs = {"dense": start_trainer("train_full_sft.py", *M3, *SFT, "--from_weight",
                                    root / "pretrain" / "out" / "pretrain_64.pth", tmp=root / "sft"),
             "moe": start_trainer("train_full_sft.py", *M3_MOE, *SFT, "--from_weight",
                                  root / "moe" / "out" / "pretrain_64_moe.pth", tmp=root / "sft_moe")}
    return {k: finish(p, check=False) for k, p in procs.items()}


@pytest.fixture(scope="module")
def sft_weights(root, sft):
    ok(sft["dense"])
    return root / "sft" / "out" / "full_sft_64.pth"


@pytest.fixture(scope="module")
def post_sft(root, sft_weights):
    """LoRA, DPO and GRPO (rule rewards), each from the SFT weights, side by side."""
    base = ["--from_weight", sft_weights, "--batch_size", 2, "--log_interval", 1, "--learning_rate", 1e-3]
    procs = {
        "lora": start_trainer("train_lora.py", *M3, *base, "--data_path", SAMPLE / "lora_identity.jsonl",
                              "--max_seq_len", 64, "--max_steps", 3, "--lora_name", "lora_m3", tmp=root / "lora"),
        "dpo": start_trainer("train_dpo.py", *M3, *base, "--data_path", SAMPLE / "dpo.jsonl", "--max_seq_len", 128,
                             "--max_steps", 3, tmp=root / "dpo"),
        "grpo": start_trainer("train_grpo.py", *M3, *base, "--data_path", SAMPLE / "rlaif.jsonl", "--max_steps", 2,
                              "--num_generations", 2, "--max_gen_len", 12, "--max_prompt_len", 64,
                              "--temperature", 1.0, "--reward", "length:1,format:0.5", "--length_target", 10,
                              tmp=root / "grpo"),
    }
    return {k: finish(p, check=False) for k, p in procs.items()}


# ================================================================================================================
# Training
# ================================================================================================================
def test_pretrain_learns_and_writes_minimind3_weights(root, pretrained):
    ok(pretrained["dense"])
    folder = root / "pretrain"
    curve = losses(folder, "pretrain_64")
    assert len(curve) == 30
    assert mean(curve[-5:]) < mean(curve[:5]) - 0.5, curve
    assert_minimind3_file(folder / "out" / "pretrain_64.pth")
    assert (folder / "ckpt" / "pretrain_64_resume.pth").is_file()


def test_moe_pretrain_resume_reproduces_the_uninterrupted_run(root, pretrained):
    """Stop the MoE run after step 3, resume it to step 6: every logged row (loss with the Switch aux loss,
    lr, grad norm) and the final weights equal the uninterrupted run's."""
    ok(pretrained["moe"]), ok(pretrained["moe_cut"])
    cut = root / "moe_cut"
    ok(run_trainer("train_pretrain.py", *M3_MOE, *RESUME, "--max_steps", 6, "--from_resume", 1, tmp=cut,
                   check=False))
    a, b = (train_log(d / "out", "pretrain_64_moe") for d in (root / "moe", cut))
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b):
        for key in ("loss", "lr", "grad_norm"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-6), (key, ra, rb)
    wa = assert_minimind3_file(root / "moe" / "out" / "pretrain_64_moe.pth", use_moe=True)
    wb = torch.load(cut / "out" / "pretrain_64_moe.pth", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert mean([r["loss"] for r in a[-2:]]) < mean([r["loss"] for r in a[:2]])


@pytest.mark.parametrize("variant", ["dense", "moe"])
def test_sft_learns_from_the_pretrained_weights(root, sft, tokenizer, variant):
    """Batch losses of a few SFT steps swing with the batch's content, so the check is on one fixed batch: the
    assistant-token loss of the SFT weights is below that of the pretrained weights they started from."""
    from dataset.lm_dataset import PadCollator, SFTDataset
    ok(sft[variant])
    moe = variant == "moe"
    folder, name = (root / "moe", "pretrain_64_moe") if moe else (root / "pretrain", "pretrain_64")
    assert f"loaded weights from {folder / 'out' / name}.pth" in sft[variant].stdout
    sft_name = "full_sft_64_moe" if moe else "full_sft_64"
    weights = root / ("sft_moe" if moe else "sft") / "out" / f"{sft_name}.pth"
    assert_minimind3_file(weights, use_moe=moe)
    assert len(losses(weights.parent.parent, sft_name)) == 12
    ds = SFTDataset(SAMPLE / "sft.jsonl", tokenizer, 128)
    batch = PadCollator(tokenizer.pad_token_id)([ds[i] for i in range(16)])
    with torch.no_grad():
        before, after = (load_m3(path, moe)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                           labels=batch["labels"]).loss.item()
                         for path in (folder / "out" / f"{name}.pth", weights))
    assert after < before - 0.1, (before, after)  # observed: dense 6.90 -> 6.68, MoE 8.66 -> 8.10


def test_lora_trains_an_adapter_for_minimind3(root, post_sft, sft_weights):
    from model.model_lora import apply_lora, load_lora, merge_lora
    ok(post_sft["lora"])
    adapter = root / "lora" / "out" / "lora" / "lora_m3_64.pth"
    assert adapter.is_file() and not (root / "lora" / "out" / "full_sft_64.pth").exists()
    state = torch.load(adapter, weights_only=True)
    assert any("self_attn.q_proj.lora_A" in k for k in state) and any("mlp.gate_proj.lora_B" in k for k in state)
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k), "the adapter did not train"
    assert len(losses(root / "lora", "lora/lora_m3_64")) == 3
    model = load_m3(sft_weights)
    base = model(torch.tensor([[1, 300, 301, 302]])).logits
    apply_lora(model)
    load_lora(model, adapter)  # strict: the adapter fits the minimind-3 base
    merge_lora(model)
    assert not torch.allclose(model(torch.tensor([[1, 300, 301, 302]])).logits, base)


def test_dpo_trains_minimind3(root, post_sft, sft_weights):
    ok(post_sft["dpo"])
    rows = train_log(root / "dpo" / "out", "dpo_64")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("loss", "chosen_reward", "rejected_reward", "reward_acc", "margin"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1
    got = assert_minimind3_file(root / "dpo" / "out" / "dpo_64.pth")
    src = torch.load(sft_weights, weights_only=True)
    assert any(not torch.equal(got[k], src[k]) for k in src)


def test_grpo_trains_minimind3_with_rule_rewards(root, post_sft, sft_weights):
    ok(post_sft["grpo"])
    rows = train_log(root / "grpo" / "out", "grpo_64")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss", "reward", "kl", "grad_norm"))
    assert all("reward_length" in r and "reward_format" in r for r in rows)
    got = assert_minimind3_file(root / "grpo" / "out" / "grpo_64.pth")
    src = torch.load(sft_weights, weights_only=True)
    assert any(not torch.equal(got[k], src[k]) for k in src)


def test_sft_with_upstream_minimind3_tokenizer_then_chat(tmp_path):
    """A user's setup for released minimind-3 weights: upstream's tokenizer for training and for chat."""
    if not (MM3_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(f"{MM3_TOKENIZER} not found: the shared data folder sits beside the repo only in CI/dev setups")
    import eval_llm
    from model.checkpoint import load_tokenizer
    from scripts.model_loading import chat_prompt
    run_trainer("train_full_sft.py", *M3, *SFT, "--from_weight", "none", "--tokenizer_path", MM3_TOKENIZER,
                tmp=tmp_path)
    curve = losses(tmp_path, "full_sft_64")
    assert mean(curve[-3:]) < mean(curve[:3]), curve
    assert_minimind3_file(tmp_path / "out" / "full_sft_64.pth")

    tok = load_tokenizer(MM3_TOKENIZER)
    (tmp_path / "p.txt").write_text("你好\n", encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    eval_llm.main([*M3, *EVAL_TINY, "--save_dir", str(tmp_path / "out"), "--tokenizer_path", str(MM3_TOKENIZER),
                   "--prompts_file", str(tmp_path / "p.txt"), "--output", str(out), "--max_new_tokens", "8",
                   "--temperature", "0"])
    rec = json.loads(out.read_text(encoding="utf-8"))
    ids = tok(chat_prompt(tok, [{"role": "user", "content": "你好"}]), add_special_tokens=False).input_ids
    assert rec["prompt_tokens"] == len(ids)  # rendered with upstream's template
    assert rec["answer"] == greedy_answer(load_m3(tmp_path / "out" / "full_sft_64.pth"), tok, ids, 8)


# ================================================================================================================
# Chat, serve, export of the trained weights
# ================================================================================================================
def test_chat_with_eval_llm(root, sft_weights, tokenizer, tmp_path):
    import eval_llm
    from scripts.model_loading import chat_prompt
    prompts = ["你好，请介绍一下你自己。", "What is 2 + 2?"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    eval_llm.main([*M3, *EVAL_TINY, "--save_dir", str(sft_weights.parent), "--prompts_file", str(tmp_path / "p.txt"),
                   "--output", str(out), "--max_new_tokens", "10", "--temperature", "0"])
    recs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    model = load_m3(sft_weights)
    for rec, prompt in zip(recs, prompts):
        ids = tokenizer(chat_prompt(tokenizer, [{"role": "user", "content": prompt}]),
                        add_special_tokens=False).input_ids
        assert rec["prompt"] == prompt and rec["prompt_tokens"] == len(ids)
        assert rec["answer"] == greedy_answer(model, tokenizer, ids, 10)


def test_serve_the_trained_weights(sft_weights, tokenizer):
    """The OpenAI server, in-process (Starlette's TestClient runs the app's lifespan, so the batching engine
    starts), loading the weights through the serving path with --preset: greedy replies equal generate()'s."""
    from fastapi.testclient import TestClient
    from scripts.model_loading import chat_prompt, load_model, model_args
    from scripts.serve_openai_api import create_app
    args = model_args(preset="minimind3", save_dir=str(sft_weights.parent), device="cpu", dtype="float32",
                      **TINY_CFG)
    model, tok, name = load_model(args, log=lambda *_: None)
    assert name == "minimind-full_sft_64" and model.config.qk_norm
    messages = [{"role": "user", "content": "你好"}]
    ids = tokenizer(chat_prompt(tokenizer, messages), add_special_tokens=False).input_ids
    want = greedy_answer(load_m3(sft_weights), tokenizer, ids, 8)
    with TestClient(create_app(model, tok, name)) as client:
        r = client.post("/v1/chat/completions", json={"model": name, "messages": messages, "max_tokens": 8,
                                                      "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"] == want
        assert body["usage"]["prompt_tokens"] == len(ids) and 1 <= body["usage"]["completion_tokens"] <= 8
        streamed = client.post("/v1/chat/completions", json={"model": name, "messages": messages, "max_tokens": 8,
                                                             "temperature": 0, "stream": True})
        chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == want


@pytest.mark.parametrize("variant", ["dense", "moe"])
def test_export_the_trained_weights_to_qwen3_and_back(root, sft, variant, tmp_path):
    from transformers import AutoModelForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM
    from scripts import convert_model
    ok(sft[variant])
    moe = variant == "moe"
    pth = root / ("sft_moe" if moe else "sft") / "out" / f"full_sft_64{'_moe' if moe else ''}.pth"
    flags = [f"--{k}={v}" for k, v in TINY_CFG.items()]
    out = tmp_path / "hf"
    convert_model.main(["torch2transformers", "--pth", str(pth), *(M3_MOE if moe else M3), *flags,
                        "--dtype", "float32", "--out_dir", str(out)])
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()  # transformers' own class, no remote code
    assert type(hf) is (Qwen3MoeForCausalLM if moe else Qwen3ForCausalLM)
    ids = torch.tensor([[1, 300, 301, 302, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, load_m3(pth, moe)(ids).logits, rtol=1e-5, atol=1e-5)
    back = tmp_path / "back.pth"
    convert_model.main(["hf2torch", "--hf_dir", str(out), "--out_path", str(back)])
    src, got = torch.load(pth, weights_only=True), torch.load(back, weights_only=True)
    assert set(got) == set(src) and all(torch.equal(got[k], src[k]) for k in src)
