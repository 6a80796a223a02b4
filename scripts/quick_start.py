"""Quick start: the whole MiniMind pipeline in miniature, on the bundled sample data, on a CPU, in minutes.

    python scripts/quick_start.py

  1. tokenizer  the shipped 6400-token BPE tokenizer in model/ (retrain your own: trainer/train_tokenizer.py)
  2. pretrain   trainer/train_pretrain.py  on dataset/sample/pretrain.jsonl   -> out/quickstart/pretrain_128.pth
  3. SFT        trainer/train_full_sft.py  on dataset/sample/sft.jsonl + sft_tool.jsonl (chat and tool calls)
                                                                             -> out/quickstart/full_sft_128.pth
  4. chat       eval_llm.py answers a few prompts with the fine-tuned model
  5. tools      scripts/eval_toolcall.py scores its tool calls on a few held-out tasks (calculator, units, ...)

Each step runs the real script as a subprocess and prints its command, so you can copy it and scale it up
(drop the tiny-model flags to get the 26M MiniMind2-small, point --data_path at the full datasets).
The model is tiny (hidden 128, 4 layers, ~1.6M parameters): expect memorised sample answers, not wisdom.
"""
import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "dataset" / "sample"


def step(title, cmd):
    print(f"\n=== {title}\n$ {' '.join(shlex.quote(str(c)) for c in cmd)}", flush=True)
    t = time.time()
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)
    print(f"--- {title}: {time.time() - t:.0f}s", flush=True)


def main():
    parser = argparse.ArgumentParser(description="MiniMind quick start on the bundled sample data")
    parser.add_argument("--save_dir", default=str(ROOT / "out" / "quickstart"))
    parser.add_argument("--device", default=None, help="default: best available (npu, cuda, mps, cpu)")
    parser.add_argument("--pretrain_epochs", type=int, default=4)
    parser.add_argument("--sft_epochs", type=int, default=6)
    args = parser.parse_args()

    py = sys.executable
    tiny = ["--hidden_size", 128, "--num_hidden_layers", 4, "--num_attention_heads", 4,
            "--num_key_value_heads", 2, "--save_dir", args.save_dir,
            "--checkpoint_dir", Path(args.save_dir) / "checkpoints", "--num_workers", 0, "--log_interval", 20]
    if args.device:
        tiny += ["--device", args.device]
    t0 = time.time()

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(ROOT / "model"))
    sample = "MiniMind 是一个小型语言模型。"
    print(f"=== 1. tokenizer: model/ ({len(tok)} tokens); {sample!r} -> "
          f"{tok.convert_ids_to_tokens(tok(sample).input_ids)}")

    step("2. pretrain", [py, ROOT / "trainer" / "train_pretrain.py", *tiny,
                         "--data_path", SAMPLE / "pretrain.jsonl", "--epochs", args.pretrain_epochs,
                         "--batch_size", 16, "--accumulation_steps", 1, "--learning_rate", 2e-3,
                         "--max_seq_len", 256])
    # One SFT file of both kinds of conversation: plain chat and tool use (system tools -> assistant
    # <tool_call> -> tool result -> answer). The loss covers the calls and answers, never the tool results.
    sft_mix = Path(args.save_dir) / "sft_mix.jsonl"
    sft_mix.parent.mkdir(parents=True, exist_ok=True)
    # The tool conversations are few (56) and long (their tool schemas), so they are repeated 3x to weigh enough.
    sft_mix.write_bytes((SAMPLE / "sft.jsonl").read_bytes() + 3 * (SAMPLE / "sft_tool.jsonl").read_bytes())
    step("3. SFT", [py, ROOT / "trainer" / "train_full_sft.py", *tiny, "--from_weight", "pretrain",
                    "--data_path", sft_mix, "--epochs", args.sft_epochs, "--batch_size", 16,
                    "--learning_rate", 1e-3, "--max_seq_len", 1024])  # a tool call follows ~650 tokens of schemas

    prompts = Path(args.save_dir) / "prompts.txt"
    prompts.write_text("你好\nWho are you?\n中国的首都是哪里？\n", encoding="utf-8")
    step("4. chat", [py, ROOT / "eval_llm.py", "--weight", "full_sft", "--save_dir", args.save_dir,
                     "--hidden_size", 128, "--num_hidden_layers", 4, "--num_attention_heads", 4,
                     "--num_key_value_heads", 2, "--prompts_file", prompts,
                     "--output", Path(args.save_dir) / "answers.jsonl", "--temperature", 0,
                     "--max_new_tokens", 80, "--repetition_penalty", 1.2, *(["--device", args.device] if args.device else [])])
    step("5. tools", [py, ROOT / "scripts" / "eval_toolcall.py", "--weight", "full_sft", "--save_dir", args.save_dir,
                      "--hidden_size", 128, "--num_hidden_layers", 4, "--num_attention_heads", 4,
                      "--num_key_value_heads", 2, "--limit", 8, "--max_turns", 2, "--max_new_tokens", 96,
                      "--output", Path(args.save_dir) / "toolcall_eval.json",
                      *(["--device", args.device] if args.device else [])])
    print(f"\nQuick start finished in {time.time() - t0:.0f}s. Weights: {args.save_dir}. "
          f"Chat with it: python eval_llm.py --save_dir {args.save_dir} --hidden_size 128 --num_hidden_layers 4 "
          f"--num_attention_heads 4 --mode interactive")


if __name__ == "__main__":
    main()
