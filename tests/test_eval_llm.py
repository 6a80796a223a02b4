"""eval_llm.py and scripts/model_loading.py: loading (native .pth, transformers folder, LoRA), batch prompts,
chat helpers and incremental decoding. Tiny random models on CPU; nothing is downloaded."""
import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import eval_llm  # noqa: E402
from helpers import ScriptedLM, read_jsonl, save_tiny, tiny_model as tiny_base_model  # noqa: E402
from model.generation import IncrementalDecoder, generate  # noqa: E402
from model.chat_template import split_thinking  # noqa: E402
from model.reply_stream import ChatStreamParser  # noqa: E402
from scripts.model_loading import add_model_args, chat_prompt, load_model, model_args  # noqa: E402
from model.checkpoint import WeightLoadError  # noqa: E402

TINY = ["--hidden_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4",
        "--num_key_value_heads", "2", "--device", "cpu", "--dtype", "float32"]


pytestmark = pytest.mark.usefixtures("one_thread")
INIT = 0.3  # a larger init than the default keeps a random model from repeating one token under greedy decoding


def tiny_model(seed=0):
    return tiny_base_model(seed, initializer_range=INIT).eval()


@pytest.fixture(scope="module")
def save_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("out")
    for name in ("full_sft_64.pth", "pretrain_64.pth"):
        save_tiny(d / name, initializer_range=INIT)
    return d


def reference_model(save_dir):
    """The saved weights as eval_llm sees them (fp16 file -> fp32 model)."""
    model = tiny_model()
    model.load_state_dict(torch.load(save_dir / "full_sft_64.pth", weights_only=True))
    return model.float().eval()


def parse(argv):
    return add_model_args(argparse.ArgumentParser()).parse_args(argv)


def run_eval(argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return eval_llm.main(argv + TINY + ["--temperature", "0"])


def greedy_answer(model, tokenizer, prompt_ids, n):
    """What eval_llm should print: greedy ids -> text -> the same output parsing."""
    ids = generate(model, [prompt_ids], max_new_tokens=n, temperature=0).responses[0].tolist()
    if tokenizer.eos_token_id in ids:
        ids = ids[:ids.index(tokenizer.eos_token_id)]
    p = ChatStreamParser()
    events = p.feed(tokenizer.decode(ids, skip_special_tokens=True)) + p.finish()
    return "".join(v for k, v in events if k == "content")


# ------------------------------------------------------------------------------------------------ batch mode
def test_prompts_file_txt_matches_greedy_generation(save_dir, tokenizer, tmp_path, capsys):
    prompts = ["你好，请介绍一下你自己。", "What is 2 + 2?"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n\n", encoding="utf-8")
    out = tmp_path / "sub" / "answers.jsonl"
    run_eval(["--save_dir", str(save_dir), "--prompts_file", str(tmp_path / "p.txt"), "--output", str(out),
              "--max_new_tokens", "12"])
    recs = read_jsonl(out)
    assert [r["prompt"] for r in recs] == prompts  # the blank line is skipped
    model = reference_model(save_dir)
    for r, prompt in zip(recs, prompts):
        ids = tokenizer(chat_prompt(tokenizer, [{"role": "user", "content": prompt}]),
                        add_special_tokens=False).input_ids
        assert r["prompt_tokens"] == len(ids)
        assert r["answer"] == greedy_answer(model, tokenizer, ids, 12)
        assert 1 <= r["tokens"] <= 12 and r["tokens_per_s"] >= 0
    printed = capsys.readouterr().out
    assert all(r["answer"] in printed for r in recs)  # streamed to stdout as well
    assert "tokens/s" in printed


def test_prompts_file_jsonl_prompt_and_conversations(save_dir, tokenizer, tmp_path):
    conv = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "reference answer, dropped"}]
    lines = [json.dumps({"prompt": "讲个笑话"}, ensure_ascii=False), json.dumps({"conversations": conv})]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "a.jsonl"
    run_eval(["--save_dir", str(save_dir), "--prompts_file", str(tmp_path / "p.jsonl"), "--output", str(out),
              "--max_new_tokens", "6"])
    recs = read_jsonl(out)
    assert [r["prompt"] for r in recs] == ["讲个笑话", "Name a colour."]
    want = tokenizer(chat_prompt(tokenizer, conv[:2]), add_special_tokens=False).input_ids
    assert recs[1]["prompt_tokens"] == len(want)  # system kept, reference answer dropped
    assert recs[1]["answer"] == greedy_answer(reference_model(save_dir), tokenizer, want, 6)


def test_bad_prompts_file_names_the_line(save_dir, tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"prompt": "ok"}\n{"text": "no"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        run_eval(["--save_dir", str(save_dir), "--prompts_file", str(tmp_path / "p.jsonl")])
    assert e.value.code == 2
    assert f"{tmp_path / 'p.jsonl'}:2" in capsys.readouterr().err
    (tmp_path / "q.jsonl").write_text('\n{"prompt": "ok"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        run_eval(["--save_dir", str(save_dir), "--prompts_file", str(tmp_path / "q.jsonl")])
    assert e.value.code == 2
    assert f"{tmp_path / 'q.jsonl'}:3: invalid JSON" in capsys.readouterr().err


def test_pretrain_weight_continues_raw_text(save_dir, tokenizer, tmp_path):
    (tmp_path / "p.txt").write_text("人工智能是\n", encoding="utf-8")
    out = tmp_path / "a.jsonl"
    run_eval(["--save_dir", str(save_dir), "--weight", "pretrain", "--prompts_file", str(tmp_path / "p.txt"),
              "--output", str(out), "--max_new_tokens", "4"])
    ids = tokenizer(tokenizer.bos_token + "人工智能是", add_special_tokens=False).input_ids
    assert read_jsonl(out)[0]["prompt_tokens"] == len(ids)  # BOS + text, no chat template


def test_interactive_mode_carries_history(save_dir, tmp_path, monkeypatch):
    out = tmp_path / "a.jsonl"
    run_eval(["--save_dir", str(save_dir), "--mode", "interactive", "--historys", "2", "--output", str(out),
              "--max_new_tokens", "3"], stdin="hello\nhello\nexit\nnever read\n", monkeypatch=monkeypatch)
    first, second = read_jsonl(out)
    assert first["prompt_tokens"] < second["prompt_tokens"]  # the second prompt holds the first exchange
    run_eval(["--save_dir", str(save_dir), "--mode", "interactive", "--output", str(out), "--max_new_tokens", "3"],
             stdin="hello\nhello\n", monkeypatch=monkeypatch)  # EOF ends it too
    a, b = read_jsonl(out)
    assert a["prompt_tokens"] == b["prompt_tokens"] == first["prompt_tokens"]  # --historys 0


def test_auto_mode_runs_builtin_prompts_from_another_cwd(save_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "eval_llm.py"), "--save_dir", str(save_dir), "--mode", "auto",
                        "--max_new_tokens", "2", "--output", "a.jsonl", *TINY], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    recs = read_jsonl(tmp_path / "a.jsonl")
    assert [x["prompt"] for x in recs] == eval_llm.CHAT_PROMPTS
    assert "tokens/s" in r.stdout


def test_wrong_weight_is_a_clear_error(save_dir, capsys):
    with pytest.raises(SystemExit) as e:
        run_eval(["--save_dir", str(save_dir), "--weight", "grpo"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --weight grpo")
    assert "grpo_64.pth" in err and "full_sft_64.pth" in err  # what was looked for, and what exists
    with pytest.raises(WeightLoadError, match="--hidden_size"):  # right file name, wrong architecture
        load_model(parse(["--save_dir", str(save_dir), "--hidden_size", "64", "--num_hidden_layers", "3",
                          "--num_attention_heads", "4", "--device", "cpu"]), log=lambda *a: None)


# ------------------------------------------------------------------------------------------------ loading
def test_native_load_is_exact_and_yarn_flag_reaches_config(save_dir):
    model, tok, name = load_model(parse(["--save_dir", str(save_dir), *TINY]), log=lambda *a: None)
    assert name == "minimind-full_sft_64" and not model.training and model.dtype == torch.float32
    ids = torch.tensor([[1, 300, 400, 500]])
    torch.testing.assert_close(model(ids).logits, reference_model(save_dir)(ids).logits)
    yarn, _, _ = load_model(model_args(save_dir=str(save_dir), inference_rope_scaling=True, hidden_size=64,
                                       num_hidden_layers=2, num_attention_heads=4, device="cpu"), log=lambda *a: None)
    assert yarn.config.inference_rope_scaling and not model.config.inference_rope_scaling
    with pytest.raises(TypeError, match="hidden"):
        model_args(hiden_size=64)


def test_bf16_on_cpu_is_the_auto_choice_where_native_and_generates_like_a_bf16_model(save_dir, tokenizer, tmp_path,
                                                                                      monkeypatch):
    import model.runtime as tu
    auto = [a for a in TINY if a not in ("--dtype", "float32")]
    monkeypatch.setattr(tu, "cpu_has_native_bf16", lambda: True)
    model, _, _ = load_model(parse(["--save_dir", str(save_dir), *auto]), log=lambda *a: None)
    assert model.dtype == torch.bfloat16
    ref = reference_model(save_dir)
    ids = torch.tensor([[1, 300, 400, 500]])
    # bf16 weights: close to fp32 (logits of a random init=0.3 model are O(10), bf16 keeps ~3 digits)
    torch.testing.assert_close(model(ids).logits.float(), ref(ids).logits, atol=0.5, rtol=0.05)
    monkeypatch.setattr(tu, "cpu_has_native_bf16", lambda: False)
    model32, _, _ = load_model(parse(["--save_dir", str(save_dir), *auto]), log=lambda *a: None)
    assert model32.dtype == torch.float32
    # the CLI in bf16 prints exactly what greedy decoding of the bf16 model gives
    (tmp_path / "p.txt").write_text("hello\n")
    out = tmp_path / "a.jsonl"
    eval_llm.main(["--save_dir", str(save_dir), "--prompts_file", str(tmp_path / "p.txt"), "--output", str(out),
                   "--max_new_tokens", "12", *auto, "--dtype", "bfloat16", "--temperature", "0"])
    ids = tokenizer(chat_prompt(tokenizer, [{"role": "user", "content": "hello"}]), add_special_tokens=False).input_ids
    assert read_jsonl(out)[0]["answer"] == greedy_answer(ref.to(torch.bfloat16), tokenizer, ids, 12)


def test_transformers_folder_loads_with_its_tokenizer(save_dir, tokenizer, tmp_path):
    ref = reference_model(save_dir)
    ref.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    model, tok, name = load_model(parse(["--load_from", str(tmp_path / "hf"), "--device", "cpu", "--dtype", "float32"]),
                                  log=lambda *a: None)
    assert name == "hf" and len(tok) == len(tokenizer)
    ids = torch.tensor([[1, 300, 400, 500]])
    torch.testing.assert_close(model(ids).logits, ref(ids).logits)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(parse(["--load_from", str(tmp_path), "--device", "cpu"]), log=lambda *a: None)


def test_non_minimind_transformers_folder_generates(tokenizer, tmp_path):
    """A Llama export goes through the generic decoding loop; it must agree with transformers' generate()."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=6400,
                                         max_position_embeddings=256, initializer_range=0.3,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    (tmp_path / "p.txt").write_text("hello\n")
    eval_llm.main(["--load_from", str(tmp_path / "llama"), "--prompts_file", str(tmp_path / "p.txt"), "--output",
                   str(tmp_path / "a.jsonl"), "--max_new_tokens", "8", "--temperature", "0", "--device", "cpu",
                   "--dtype", "float32"])
    rec = read_jsonl(tmp_path / "a.jsonl")[0]
    ids = tokenizer(chat_prompt(tokenizer, [{"role": "user", "content": "hello"}]), add_special_tokens=False).input_ids
    want = llama.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    if 2 in want:
        want = want[:want.index(2)]
    p = ChatStreamParser()
    assert rec["answer"] == "".join(v for k, v in p.feed(tokenizer.decode(want, skip_special_tokens=True))
                                    + p.finish() if k == "content")


def test_lora_adapter_is_merged(save_dir, tmp_path):
    lora = pytest.importorskip("model.model_lora", reason="model/model_lora.py not written yet")
    base = reference_model(save_dir)
    adapted = reference_model(save_dir)
    lora.apply_lora(adapted, rank=4, alpha=8.0, targets=["q_proj", "down_proj"])
    torch.manual_seed(1)
    for m in lora.lora_modules(adapted).values():
        torch.nn.init.normal_(m.lora_B.weight, std=0.2)  # a trained adapter: B != 0
    lora.save_lora(adapted, save_dir / "lora" / "mini_64.pth")
    # alpha 8 is read from mini_64.json, written beside the adapter by save_lora
    args = parse(["--save_dir", str(save_dir), "--lora_weight", "mini", *TINY])
    model, _, name = load_model(args, log=lambda *a: None)
    assert name == "minimind-full_sft_64+mini"
    assert not lora.lora_modules(model)  # merged: plain Linear layers again
    ids = torch.tensor([[1, 300, 400, 500]])
    torch.testing.assert_close(model(ids).logits, adapted(ids).logits, atol=1e-4, rtol=1e-4)
    assert (model(ids).logits - base(ids).logits).abs().max() > 1e-2  # the adapter did something
    # an explicit --lora_alpha wins over the file's; without the .json (upstream adapters) the default is 16
    scale = {}
    for extra, meta in ((["--lora_alpha", "16"], True), ([], False)):
        if not meta:
            (save_dir / "lora" / "mini_64.json").rename(save_dir / "lora" / "mini_64.json.bak")
        try:
            m, _, _ = load_model(parse(["--save_dir", str(save_dir), "--lora_weight", "mini", *TINY, *extra]),
                                 log=lambda *a: None)
        finally:
            if not meta:
                (save_dir / "lora" / "mini_64.json.bak").rename(save_dir / "lora" / "mini_64.json")
        scale[meta] = m(ids).logits
    torch.testing.assert_close(scale[True], scale[False])  # both alpha 16
    assert (scale[True] - model(ids).logits).abs().max() > 1e-3  # and alpha 16 differs from the saved 8
    # also through the CLI, by path
    (tmp_path / "p.txt").write_text("hi\n")
    recs = run_eval(["--save_dir", str(save_dir), "--lora_weight", str(save_dir / "lora" / "mini_64.pth"),
                     "--lora_alpha", "8", "--prompts_file", str(tmp_path / "p.txt"), "--max_new_tokens", "3"])
    assert len(recs) == 1
    with pytest.raises(SystemExit):
        run_eval(["--save_dir", str(save_dir), "--lora_weight", "absent", "--prompts_file", str(tmp_path / "p.txt")])


# ------------------------------------------------------------------------------------------------ helpers
def test_incremental_decoding_never_breaks_characters(tokenizer):
    text = "你好，世界！😀👍🏽 MiniMind 是一个小模型。🇨🇳 end"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) > len(text.split())  # multi-token characters are really there
    d = IncrementalDecoder(tokenizer)
    pieces = [d.push(i) for i in ids] + [d.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p == "") >= 3  # emoji bytes were held back, not printed broken
    naive = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in naive)  # what one-token-at-a-time decoding would have printed


def test_stream_parser_and_split_thinking():
    text = ('<think>\nstep 1\n</think>\n\n<answer>The answer.</answer>\n<tool_call>\n{"name": "f", "arguments": '
            '{"x": 1}}\n</tool_call>')
    p = ChatStreamParser()
    by_char = [e for ch in text for e in p.feed(ch)] + p.finish()
    p = ChatStreamParser()
    at_once = p.feed(text) + p.finish()
    for events in (by_char, at_once):
        assert "".join(v for k, v in events if k == "reasoning") == "step 1"
        assert "".join(v for k, v in events if k == "content") == "The answer."
        assert [v for k, v in events if k == "tool_call"] == [{"name": "f", "arguments": '{"x": 1}'}]
    p = ChatStreamParser(in_thinking=True)  # the prompt opened <think>
    events = p.feed("still thinking</think>done") + p.finish()
    assert events == [("reasoning", "still thinking"), ("content", "done")]
    p = ChatStreamParser()
    bad = "<tool_call>{not json}</tool_call>"
    assert p.feed(bad) + p.finish() == [("content", bad)]
    assert split_thinking("<think>\nR\n</think>\n\nA") == ("R", "A")
    assert split_thinking("R</think>A") == ("R", "A")
    assert split_thinking("<think>unfinished") == ("unfinished", "")
    assert split_thinking("plain") == ("", "plain")


def test_chat_prompt_renders_template(tokenizer):
    msgs = [{"role": "user", "content": "hi"}]
    assert chat_prompt(tokenizer, msgs).endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert chat_prompt(tokenizer, msgs, enable_thinking=False).endswith("<think>\n\n</think>\n\n")
    tools = [{"type": "function", "function": {"name": "get_time"}}]
    assert "<tools>\nget_time()\n</tools>" in chat_prompt(tokenizer, msgs, tools=tools)  # our compact tool line


@pytest.mark.parametrize("show", [1, 0])
def test_reasoning_is_shown_apart_or_hidden(tokenizer, tmp_path, monkeypatch, capsys, show):
    script = tokenizer("<think>\n先想一想。\n</think>\n\n答案是 42。", add_special_tokens=False).input_ids
    lm = ScriptedLM(script, tokenizer.eos_token_id)
    monkeypatch.setattr(eval_llm, "load_model", lambda args: (lm, tokenizer, "scripted"))
    (tmp_path / "p.txt").write_text("问题\n", encoding="utf-8")
    recs = eval_llm.main(["--prompts_file", str(tmp_path / "p.txt"), "--show_thinking", str(show),
                          "--output", str(tmp_path / "a.jsonl")])
    assert recs[0]["answer"] == "答案是 42。" and recs[0]["reasoning"] == "先想一想。"
    assert recs[0]["tokens"] == len(script) + 1
    out = capsys.readouterr().out
    assert "答案是 42。" in out and "<think>" not in out
    assert ("[think] 先想一想。 [/think]" in out) == bool(show) and ("先想一想" in out) == bool(show)


@pytest.mark.parametrize("which", ["ours", "minimind3"])
def test_thinking_switch_reaches_the_template(request, tmp_path, monkeypatch, capsys, which):
    """--enable_thinking 1|0 (alias --open_thinking) reaches the model as the switch its tokenizer's template reads:
    the prompt the model gets opens <think> (minimind-3) or leaves the header plain (ours) when on, and pre-fills the
    empty block when off. With the block opened by the prompt, the reply up to </think> is reasoning. --show_thinking
    stays display only: it changes no prompt."""
    from helpers import assert_thinking_prompt, prompt_recorder
    tokenizer = request.getfixturevalue("tokenizer" if which == "ours" else "mm3")  # mm3 skips without ../shared
    (tmp_path / "p.txt").write_text("问题\n", encoding="utf-8")
    for flag, value, show in [("--enable_thinking", 1, 1), ("--open_thinking", 1, 0), ("--enable_thinking", 0, 1),
                              ("--open_thinking", 0, 1), (None, None, 0)]:
        prompts = []
        lm = prompt_recorder(tokenizer, "先想一想。\n</think>\n\n答案是 42。", prompts)
        monkeypatch.setattr(eval_llm, "load_model", lambda args: (lm, tokenizer, "scripted"))
        argv = ["--prompts_file", str(tmp_path / "p.txt"), "--show_thinking", str(show)]
        recs = eval_llm.main(argv + ([flag, str(value)] if flag else []))
        (prompt,) = prompts
        if flag is None:  # unset: the template's own default (ours: thinking allowed; minimind-3's: off)
            assert_thinking_prompt(prompt, which, on=which == "ours")
            continue
        assert_thinking_prompt(prompt, which, on=bool(value))
        if value and which == "minimind3":  # the prompt opened the block: the text before </think> is reasoning
            assert recs[0]["reasoning"] == "先想一想。" and recs[0]["answer"] == "答案是 42。"
    with pytest.raises(SystemExit):
        eval_llm.main(["--enable_thinking", "2"])
    assert "invalid choice" in capsys.readouterr().err
