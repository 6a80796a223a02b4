"""Tests for scripts/eval_benchmark.py: perplexity, sliding windows, the YaRN sweep, multiple-choice scoring and
the official CSV layouts, GSM8K answer extraction, the command line, and lm-evaluation-harness parity."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import TINY_CFG, tiny_model, write_jsonl  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from scripts import eval_benchmark as eb  # noqa: E402

TEXTS = ["Hello world, this is a short test document.", "你好，世界。今天天气很好，我们去公园散步吧。",
         "The quick brown fox jumps over the lazy dog. " * 4]


@pytest.fixture(scope="module")
def model():
    return tiny_model(0).eval()


def direct_nll(model, docs):
    """Sum of next-token NLL over whole documents, one forward each: the definition."""
    total, n = 0.0, 0
    with torch.no_grad():
        for d in docs:
            x = torch.tensor([d])
            total += F.cross_entropy(model(x).logits[0, :-1].float(), x[0, 1:], reduction="sum").item()
            n += len(d) - 1
    return total, n


# ------------------------------------------------------------------------------------------------ perplexity
def test_ppl_is_exp_of_mean_token_nll(model, tokenizer):
    docs = eb.encode_documents(tokenizer, TEXTS)
    assert docs[0][0] == tokenizer.bos_token_id and docs[0][-1] == tokenizer.eos_token_id
    r = eb.perplexity(model, docs, max_len=512, batch_size=2)
    total, n = direct_nll(model, docs)
    assert r["tokens"] == n == sum(len(d) - 1 for d in docs)  # token-weighted over all documents
    assert r["ppl"] == pytest.approx(math.exp(total / n), rel=1e-5)
    assert r["windows"] == len(docs)


def test_sliding_windows_score_every_token_exactly_once():
    for n in (1, 2, 5, 16, 17, 33, 100):
        for max_len, stride in ((16, 8), (16, 15), (16, 1), (2, 1), (7, 3)):
            wins = eb.sliding_windows(n, max_len, stride)
            scored = [t for _, end, frm in wins for t in range(frm, end)]
            assert scored == list(range(1, n)), (n, max_len, stride)  # each target once, in order
            for start, end, frm in wins:
                assert 0 <= start < frm <= end and end - start <= max_len  # >= 1 context token, fits
            if n <= max_len:
                assert len(wins) <= 1  # fits: one window, the whole sequence
    with pytest.raises(AssertionError):
        eb.sliding_windows(10, 8, 8)  # stride == window would leave a token without context


def test_sliding_window_ppl_matches_single_window_when_text_fits(model, tokenizer):
    docs = eb.encode_documents(tokenizer, TEXTS)
    longest = max(len(d) for d in docs)
    a = eb.perplexity(model, docs, max_len=longest, stride=3)
    b = eb.perplexity(model, docs, max_len=4096)
    assert a["windows"] == len(docs) and a["ppl"] == pytest.approx(b["ppl"], rel=1e-5)
    # Longer than the window: still every token once, and each window's NLL is what the model gives on it.
    c = eb.perplexity(model, docs, max_len=12, stride=5, batch_size=3)
    assert c["tokens"] == a["tokens"] and c["windows"] > len(docs)
    total = 0.0
    with torch.no_grad():
        for d in docs:
            for start, end, frm in eb.sliding_windows(len(d), 12, 5):
                x = torch.tensor([d[start:end]])
                nll = F.cross_entropy(model(x).logits[0, :-1], x[0, 1:], reduction="none")
                total += nll[frm - start - 1:].sum().item()
    assert c["nll"] == pytest.approx(total / c["tokens"], rel=1e-5)


def test_context_sweep_with_and_without_yarn_writes_png(model, tokenizer, tmp_path):
    stream = [t for d in eb.encode_documents(tokenizer, TEXTS * 6) for t in d]
    r = eb.context_sweep(model, stream, [16, 64], max_tokens=128, batch_size=4)
    assert set(r["ppl"]) == {"no_scaling", "yarn"} and r["lengths"] == [16, 64]
    assert all(math.isfinite(p) and p > 1 for ps in r["ppl"].values() for p in ps)
    assert r["ppl"]["no_scaling"] != r["ppl"]["yarn"]  # YaRN really changes the rotary frequencies
    # The no-scaling variant is the original model itself.
    chunks = [stream[i:i + 64] for i in range(0, 128 - 64 + 1, 64)]
    total, n = direct_nll(model, chunks)
    assert r["ppl"]["no_scaling"][1] == pytest.approx(math.exp(total / n), rel=1e-5)
    assert model.config.inference_rope_scaling is False  # the sweep never touches the caller's model
    png = eb.plot_context_sweep(r, tmp_path / "rope_ppl.png", train_len=32)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(eb.EvalError, match="tokens"):
        eb.context_sweep(model, stream[:50], [64])


# ------------------------------------------------------------------------------------------------ multiple choice
class LetterStub(torch.nn.Module):
    """A 'model' whose next-token distribution always favours one token id, whatever the input."""

    def __init__(self, favoured: int, vocab: int = 6400):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.favoured, self.vocab, self.calls = favoured, vocab, []

    def forward(self, input_ids):
        self.calls.append(input_ids.clone())
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.favoured] = 10.0
        return type("Out", (), {"logits": logits})()


def test_mc_scoring_picks_the_letter_the_model_favours(tokenizer, tmp_path):
    rows = [{"question": "Pick one?", "choices": ["w", "x", "y", "z"], "answer": a} for a in ("C", "A", "C", 3)]
    _, subs = eb.load_mc(write_jsonl(tmp_path / "mc.jsonl", rows))
    space_c = tokenizer(" C", add_special_tokens=False).input_ids
    assert len(space_c) == 1
    stub = LetterStub(space_c[0])  # English prompt ends in "Answer:", the natural continuation is " C"
    r = eb.evaluate_mc(stub, tokenizer, subs, batch_size=3)
    assert [p["pred"] for p in r["predictions"]] == ["C"] * 4
    assert r["overall"]["correct"] == 2 and r["overall"]["acc"] == 0.5 and r["overall"]["chance"] == 0.25
    assert r["overall"]["pred_counts"] == {"A": 0, "C": 4, "D": 0}
    # Prompts end exactly at the answer position, and right padding does not move where logits are read.
    for p in r["predictions"]:
        assert p["prompt_tokens"] > 5
    lens = sorted({p["prompt_tokens"] for p in r["predictions"]})
    text = tokenizer.decode(stub.calls[0][0, :lens[-1]])
    assert text.rstrip().endswith("Answer:")
    # The bare letter spelling counts as the same answer (Chinese prompts continue "答案：" with "B").
    stub_b = LetterStub(tokenizer("B", add_special_tokens=False).input_ids[0])
    r = eb.evaluate_mc(stub_b, tokenizer, subs)
    assert [p["pred"] for p in r["predictions"]] == ["B"] * 4 and r["overall"]["acc"] == 0.0


def test_mc_scores_equal_letter_logprobs_of_a_real_model(model, tokenizer):
    _, subs = eb.load_mc(ROOT / "dataset" / "sample" / "eval_mc.jsonl", shots=2)
    subs[0].items = subs[0].items[:6]
    r = eb.evaluate_mc(model, tokenizer, subs, shots=2, batch_size=4)
    letters = eb.letter_token_ids(tokenizer)
    for it, p in zip(subs[0].items, r["predictions"]):
        lang = eb.item_lang(it, "auto")
        ids, used = eb.mc_prompt_ids(tokenizer, it, subs[0].dev[:2], lang, subs[0].topic, False, 2048)
        assert used == 2 and ids[0] == tokenizer.bos_token_id
        with torch.no_grad():
            lp = F.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
        want = [torch.logsumexp(lp[letters[i]], 0).item() for i in range(4)]
        assert p["scores"] == pytest.approx(want, abs=1e-3)
        assert p["pred"] == "ABCD"[max(range(4), key=want.__getitem__)]
    assert r["overall"]["chance"] == 0.25 and r["overall"]["n"] == 6


def test_ceval_and_cmmlu_layouts_parse_with_k_shot_from_dev(tokenizer, tmp_path):
    ce = tmp_path / "ceval"
    (ce / "val").mkdir(parents=True)
    (ce / "dev").mkdir()
    (ce / "val" / "computer_network_val.csv").write_text(
        "id,question,A,B,C,D,answer\n0,TCP属于哪一层？,应用层,传输层,网络层,物理层,B\n"
        '1,"含逗号, 的题目",甲,乙,丙,丁,D\n', encoding="utf-8")
    (ce / "dev" / "computer_network_dev.csv").write_text(
        "id,question,A,B,C,D,answer,explanation\n0,HTTP默认端口？,21,80,443,25,B,1. 常识\n"
        "1,IP地址有多少位？,16,32,64,128,B,\n", encoding="utf-8")
    fmt, subs = eb.load_mc(ce, shots=2)
    assert fmt == "ceval" and [s.name for s in subs] == ["computer_network"]
    s = subs[0]
    assert [i.answer for i in s.items] == [1, 3] and s.items[1].question == "含逗号, 的题目"
    assert [d.question for d in s.dev] == ["HTTP默认端口？", "IP地址有多少位？"]
    prompt = eb.mc_prompt_text(s.items[0], s.dev[:2], "zh", s.topic)
    assert prompt.count("答案：") == 3 and prompt.endswith("TCP属于哪一层？\nA. 应用层\nB. 传输层\nC. 网络层\nD. 物理层\n答案：")
    assert "HTTP默认端口？\nA. 21\nB. 80\nC. 443\nD. 25\n答案：B\n\n" in prompt
    assert prompt.index("HTTP") < prompt.index("IP地址") < prompt.index("TCP")
    chat = eb.mc_prompt_text(s.items[0], s.dev[:1], "zh", s.topic, chat=True, tokenizer=tokenizer)
    assert chat.endswith("<|im_start|>assistant\n") and "<|im_start|>assistant\nB<|im_end|>" in chat

    cm = tmp_path / "cmmlu"
    (cm / "test").mkdir(parents=True)
    (cm / "dev").mkdir()
    (cm / "test" / "agronomy.csv").write_text(",Question,A,B,C,D,Answer\n0,农作物？,稻,麦,豆,薯,C\n", encoding="utf-8")
    (cm / "dev" / "agronomy.csv").write_text(",Question,A,B,C,D,Answer\n0,示例？,一,二,三,四,A\n", encoding="utf-8")
    fmt, subs = eb.load_mc(cm, shots=1)
    assert fmt == "cmmlu" and subs[0].items[0].answer == 2 and subs[0].dev[0].question == "示例？"
    ids, used = eb.mc_prompt_ids(tokenizer, subs[0].items[0], subs[0].dev, "zh", "agronomy", False, 2048)
    assert used == 1
    short, used = eb.mc_prompt_ids(tokenizer, subs[0].items[0], subs[0].dev, "zh", "agronomy", False, 30)
    assert used == 0 and len(short) <= 30  # examples dropped first when the prompt does not fit

    with pytest.raises(eb.EvalError, match="fewer examples"):
        eb.load_mc(cm, shots=3)
    (cm / "test" / "bad.csv").write_text(",Question,A,B,C,D,Answer\n0,q,1,2,3,4,E\n", encoding="utf-8")
    with pytest.raises(eb.DataFormatError, match=r"bad.csv:2"):
        eb.load_mc(cm)
    bad_jsonl = cm.parent / "bad_mc.jsonl"
    bad_jsonl.write_text('{"question": "q", "choices": ["a", "b"], "answer": "A"}\n{"question": \n',
                         encoding="utf-8")
    with pytest.raises(eb.DataFormatError, match=r"bad_mc\.jsonl:2: invalid JSON"):
        eb._jsonl_items(bad_jsonl)
    with pytest.raises(eb.EvalError, match="not public"):
        eb.load_mc(ce, split="test")


# ------------------------------------------------------------------------------------------------ gsm8k
@pytest.mark.parametrize("text,value", [
    ("She has 3 + 4 = 7 apples.\n#### 7", 7), ("#### 1,234", 1234), ("#### -5", -5), ("#### $18.50", 18.5),
    ("<think>\n2 * 3 = 6, plus 4\n</think>\n<answer>\n10\n</answer>", 10),
    ("<answer>The answer is 42 dollars.</answer> Then 99", 42), ("so he pays 3.50.", 3.5),
    ("first 12, then 7 more, total 19", 19), ("I don't know", None), ("", None),
])
def test_gsm8k_answer_extraction(text, value):
    got = eb.extract_answer(text)
    assert got == value if value is None else got == pytest.approx(value)


def test_gsm8k_scoring_on_hand_responses(tokenizer):
    records = [{"question": "q1", "answer": "work\n#### 72"}, {"question": "q2", "answer": "#### 1,000"},
               {"question": "q3", "answer": 5}, {"question": "q4", "answer": "#### 3"}]
    responses = {"q1": "... so 72.0 in total", "q2": "<answer>1000</answer>", "q3": "it is 6", "q4": "no idea"}
    seen = []

    def fake_generate(prompts):
        texts = [tokenizer.decode(p) for p in prompts]
        seen.extend(texts)
        return [responses[next(q for q in responses if f"user\n{q}<|im_end|>" in t)] for t in texts]

    r = eb.evaluate_gsm8k(records, tokenizer, fake_generate, batch_size=3)
    assert [s["correct"] for s in r["samples"]] == [True, True, False, False]
    assert r["overall"] == {"n": 4, "correct": 2, "acc": 0.5, "no_number": 1}
    assert all(t.endswith("<|im_start|>assistant\n") for t in seen)  # chat template with generation prompt


def test_gsm8k_greedy_generation_runs_batched(model, tokenizer):
    gen = eb.default_generate_fn(model, tokenizer, max_new_tokens=6)
    prompts = eb.gsm8k_prompts(tokenizer, ["1+1?", "What is two plus two, in words?"])
    batched = gen(prompts)
    single = [gen([p])[0] for p in prompts]
    assert batched == single  # left padding in a batch does not change greedy outputs


# ------------------------------------------------------------------------------------------------ command line
def test_cli_mc_and_ppl_on_native_weights(model, tmp_path, capsys):
    from model.checkpoint import half_state_dict
    torch.save(half_state_dict(model), tmp_path / "pretrain_64.pth")
    flags = ["--weight", "pretrain", "--save_dir", str(tmp_path), "--hidden_size", "64", "--num_hidden_layers", "2",
             "--num_attention_heads", "4", "--num_key_value_heads", "2", "--device", "cpu"]
    out = tmp_path / "mc.json"
    assert eb.main(["mc", "--data_path", str(ROOT / "dataset" / "sample" / "eval_mc.jsonl"), "--shots", "1",
                    "--limit", "5", "--output", str(out), *flags]) == 0
    r = json.loads(out.read_text())
    assert r["task"] == "mc" and r["overall"]["n"] == 5 and r["overall"]["chance"] == 0.25
    pre = tmp_path / "pre.jsonl"
    write_jsonl(pre, [{"text": t} for t in TEXTS])
    assert eb.main(["ppl", "--data_path", str(pre), "--output", str(tmp_path / "ppl.json"), *flags]) == 0
    r = json.loads((tmp_path / "ppl.json").read_text())
    assert r["task"] == "ppl" and r["documents"] == 3 and r["ppl"] > 1
    # Wrong size for the weights, or a missing file: one clear error line, exit status 2.
    bad = [f if f != "64" else "128" for f in flags]
    assert eb.main(["ppl", "--data_path", str(pre), *bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") <= 4 and "hidden_size" in err and "Traceback" not in err
    assert eb.main(["ppl", "--data_path", str(tmp_path / "missing.jsonl"), *flags]) == 2
    assert "not found" in capsys.readouterr().err


def test_lm_eval_command_line():
    cmd = eb.lm_eval_command("out/full_sft_512-hf", "ceval-valid,cmmlu", device="cuda:0", batch_size=16,
                             num_fewshot=5, limit=10)
    joined = " ".join(cmd)
    assert "--model hf --model_args pretrained=out/full_sft_512-hf,trust_remote_code=True,dtype=float32" in joined
    assert "--tasks ceval-valid,cmmlu" in joined and "--num_fewshot 5" in joined and "--limit 10" in joined


# ------------------------------------------------------------------------------------------------ lm-eval-harness
LOCAL_TASK = """task: minimind_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\n\
C. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{['A', 'B', 'C', 'D'].index(answer)}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def test_lm_eval_harness_on_a_torch2hf_export_matches_our_scores(model, tokenizer, tmp_path):
    pytest.importorskip("lm_eval", reason="lm_eval not installed (optional: pip install 'lm_eval[hf]')")
    pytest.importorskip("accelerate", reason="lm_eval's hf model needs accelerate: pip install 'lm_eval[hf]'")
    # Weights exactly representable in fp16, so the exported folder and the in-memory model are identical.
    from model.checkpoint import half_state_dict
    state = half_state_dict(model)
    torch.save(state, tmp_path / "tiny.pth")
    ref = MiniMindForCausalLM(MiniMindConfig(**TINY_CFG))
    ref.load_state_dict({k: v.float() for k, v in state.items()})
    ref.eval()
    hf_dir = tmp_path / "tiny-hf"
    from scripts import convert_model  # the documented export: `convert_model.py torch2hf --pth tiny.pth ...`
    assert convert_model.main(["torch2hf", "--pth", str(tmp_path / "tiny.pth"), "--hidden_size", "64",
                               "--num_hidden_layers", "2", "--num_attention_heads", "4", "--num_key_value_heads",
                               "2", "--out_dir", str(hf_dir), "--dtype", "float32"]) is None
    assert (hf_dir / "config.json").is_file()

    english = [json.loads(l) for l in (ROOT / "dataset" / "sample" / "eval_mc.jsonl").read_text().splitlines()
               if l.strip() and not eb._CJK.search(l)][:6]
    data = write_jsonl(tmp_path / "local_mc.jsonl", english)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "minimind_local_mc.yaml").write_text(LOCAL_TASK.format(data=data), encoding="utf-8")
    out = tmp_path / "lm_eval_out"
    cmd = eb.lm_eval_command(hf_dir, "minimind_local_mc", device="cpu", batch_size=4, include_path=tasks,
                             output_path=out, extra="--log_samples")
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = next(out.rglob("results_*.json"))
    acc = json.loads(results.read_text())["results"]["minimind_local_mc"]["acc,none"]
    samples = [json.loads(l) for l in next(out.rglob("samples_minimind_local_mc_*.jsonl")).read_text().splitlines()]

    # The same prompts scored by our code: lm_eval's log-likelihood of " A".." D" is our letter log-prob.
    _, subs = eb.load_mc(data)
    space_ids = [tokenizer(f" {l}", add_special_tokens=False).input_ids[0] for l in "ABCD"]
    ours = []
    for it in subs[0].items:
        text = f"{eb.format_question(it, 'en')}\nAnswer:"
        ids = tokenizer(text, add_special_tokens=False).input_ids  # lm_eval's hf model adds no BOS here
        lp = eb.next_token_logprobs(ref, [ids])[0]
        ours.append([lp[i].item() for i in space_ids])
    by_doc = {s["doc_id"]: s for s in samples}
    for i, scores in enumerate(ours):
        theirs = [r[0] for r in by_doc[i]["filtered_resps"]]
        theirs = [float(t[0]) if isinstance(t, (list, tuple)) else float(t) for t in theirs]
        assert theirs == pytest.approx(scores, abs=1e-3)
    want = sum(max(range(4), key=s.__getitem__) == it.answer for s, it in zip(ours, subs[0].items)) / len(ours)
    assert acc == pytest.approx(want)
