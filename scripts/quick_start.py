"""Quick start: the whole MiniMind pipeline in miniature, on the bundled sample data, on a CPU, in minutes.

    python scripts/quick_start.py

  1. tokenizer  the shipped 6400-token BPE tokenizer in model/ (retrain your own: trainer/train_tokenizer.py)
  2. pretrain   trainer/train_pretrain.py  on dataset/sample/pretrain.jsonl   -> out/quickstart/pretrain_128.pth
  3. SFT        trainer/train_full_sft.py  on dataset/sample/sft.jsonl   -> out/quickstart/full_sft_128.pth
  4. chat       eval_llm.py answers a few prompts with the fine-tuned model
  5. tool SFT   trainer/train_full_sft.py  on dataset/sample/sft_tool.jsonl (tool schemas, <tool_call>s, results,
                answers), starting from step 3's weights               -> out/quickstart/tool_sft_128.pth
  6. tools      scripts/eval_toolcall.py scores its tool calls on the 47 held-out tasks of
                dataset/sample/toolcall_eval.jsonl (calculator, units, time zones, exchange rates, weather, ...)

Each step runs the real script as a subprocess and prints its command, so you can copy it and scale it up
(drop the tiny-model flags to get the 26M MiniMind2-small, point --data_path at the full datasets).
The model is tiny (hidden 128, 4 layers, ~1.6M parameters): expect memorised sample answers, not wisdom.
Tool use is its own SFT step because of its cost: a tool conversation is ~700 tokens (two tool schemas in the
system prompt) of which only ~80 are learned, and the model has seen nothing longer than 256 tokens before. So it
trains with batch size 1 (many small steps beat a few big ones here) on 180 short conversations; the tiny model
then writes well-formed calls but rarely the right arguments, and it no longer chats well (a 1.6M model does not
hold both): chat with full_sft, call tools with tool_sft. This step shows the format only; for a model that gets
its arguments right, and agent RL that improves it, run scripts/tool_recipe.py (README "Tool use").
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
    parser.add_argument("--sft_epochs", type=int, default=10)
    parser.add_argument("--tool_sft_epochs", type=int, default=4)
    args = parser.parse_args()

    py = sys.executable
    size = ["--hidden_size", 128, "--num_hidden_layers", 4, "--num_attention_heads", 4, "--num_key_value_heads", 2]
    device = ["--device", args.device] if args.device else []
    # training flags: the tiny size, where its files go, no loader workers
    tiny = [*size, "--save_dir", args.save_dir, "--checkpoint_dir", Path(args.save_dir) / "checkpoints",
            "--num_workers", 0, *device]
    t0 = time.time()

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(ROOT / "model"))
    sample = "MiniMind 是一个小型语言模型。"
    print(f"=== 1. tokenizer: model/ ({len(tok)} tokens); {sample!r} -> "
          f"{tok.convert_ids_to_tokens(tok(sample).input_ids)}")

    step("2. pretrain", [py, ROOT / "trainer" / "train_pretrain.py", *tiny,
                         "--data_path", SAMPLE / "pretrain.jsonl", "--epochs", args.pretrain_epochs,
                         "--batch_size", 16, "--accumulation_steps", 1, "--learning_rate", 2e-3,
                         "--max_seq_len", 256, "--log_interval", 20])
    step("3. SFT", [py, ROOT / "trainer" / "train_full_sft.py", *tiny, "--from_weight", "pretrain",
                    "--data_path", SAMPLE / "sft.jsonl", "--epochs", args.sft_epochs, "--batch_size", 16,
                    "--learning_rate", 1e-3, "--max_seq_len", 256, "--log_interval", 20])

    prompts = Path(args.save_dir) / "prompts.txt"
    prompts.write_text("你好\nWho are you?\n中国的首都是哪里？\n", encoding="utf-8")
    step("4. chat", [py, ROOT / "eval_llm.py", "--weight", "full_sft", "--save_dir", args.save_dir, *size,
                     "--prompts_file", prompts, "--output", Path(args.save_dir) / "answers.jsonl", "--temperature", 0,
                     "--max_new_tokens", 80, "--repetition_penalty", 1.2, *device])
    # Tool calls come after ~600 tokens of tool schemas: --max_seq_len 1024 keeps whole conversations (the loss
    # covers the calls and answers, never the tool results). Batch size 1: 720 small steps teach the format, while
    # 115 steps of batch 8 over the same data (more tokens, more CPU time) still write broken JSON.
    step("5. tool SFT", [py, ROOT / "trainer" / "train_full_sft.py", *tiny, "--from_weight", "full_sft",
                         "--save_weight", "tool_sft", "--data_path", SAMPLE / "sft_tool.jsonl",
                         "--epochs", args.tool_sft_epochs, "--batch_size", 1, "--learning_rate", 2e-3,
                         "--max_seq_len", 1024, "--log_interval", 180])
    step("6. tools", [py, ROOT / "scripts" / "eval_toolcall.py", "--weight", "tool_sft", "--save_dir", args.save_dir,
                      *size, "--max_turns", 3, "--max_new_tokens", 96,
                      "--output", Path(args.save_dir) / "toolcall_eval.json", *device])
    print(f"\nQuick start finished in {time.time() - t0:.0f}s. Weights: {args.save_dir}. "
          f"Chat with it: python eval_llm.py --save_dir {args.save_dir} --hidden_size 128 --num_hidden_layers 4 "
          f"--num_attention_heads 4 --mode interactive"
          f"\nTool use that gets its arguments right, then agent RL (README \"Tool use\"): "
          f"python scripts/tool_recipe.py")


if __name__ == "__main__":
    main()
