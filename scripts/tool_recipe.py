"""Tool use end to end on a CPU: data -> tool SFT -> eval -> agent RL -> eval, and a before/after table.

    python scripts/tool_recipe.py                              # about 15 minutes on 2 CPU cores
    python scripts/tool_recipe.py --tasks my_tasks.jsonl       # also score your own tasks (eval_toolcall format)

  1. data      scripts/make_tool_data.py: SFT conversations, agent-RL tasks and held-out eval tasks for every tool
               of model/tools.py (numbers, cities, currencies drawn at random; held-out templates and calls)
  2. warm-up   trainer/train_pretrain.py from random weights on copy texts (a random span, then the same span):
               the "induction heads" that copy form in a couple of minutes here, and late or never on tool data
     tool SFT  trainer/train_full_sft.py from there; 70% of the conversations are "bare" (no system prompt and tool
               list: ~3x shorter, so the same compute shows the model ~3x more calls to copy), 30% full
  3. eval      scripts/eval_toolcall.py on the held-out tasks (and --tasks)
  4. agent RL  trainer/train_agent.py (GRPO) from the tool-SFT weights, on the generated agent-RL tasks
  5. eval      the same tasks again
  6. report    the before/after table (Markdown, also in summary.json) and the reward curve (reward_curve.png)

Every step runs the real script as a subprocess and prints its command, so you can copy it and scale it up.
Why from random weights and not from the quick start's chat model: tool use here is a copying skill (numbers and
names from the question into the call, results into the answer), and a 2-minute chat SFT teaches nothing about
it; the whole budget goes to tool data. Why this size: README "Tool use" has exact arguments against model size
and training tokens, measured on this machine's kind of CPU.
"""
import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.script_utils import write_json  # noqa: E402

METRICS = [("valid_json", "valid calls"), ("right_tool", "right tool"), ("args_exact", "exact arguments"),
           ("result_match", "tool results match"), ("no_tool_ok", "no call when none needed"),
           ("answer_acc", "final-answer accuracy")]


def step(title, cmd):
    print(f"\n=== {title}\n$ {' '.join(shlex.quote(str(c)) for c in cmd)}", flush=True)
    t = time.time()
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)
    seconds = time.time() - t
    print(f"--- {title}: {seconds:.0f}s", flush=True)
    return seconds


def metrics_table(columns) -> str:
    """[(name, metrics dict)] -> a Markdown table, one row per metric."""
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    head = "| metric | " + " | ".join(n for n, _ in columns) + " |"
    rows = [f"| {label} | " + " | ".join(pct(m.get(key)) for _, m in columns) + " |" for key, label in METRICS]
    return "\n".join([head, "|---|" + "---:|" * len(columns), *rows])


def reward_curve(log_path: Path, png: Path):
    from scripts.report import plot_metric
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [r for r in records if "reward" in r]
    if records:
        plot_metric({"agent RL": records}, "reward", png, smooth=0.6)
        plot_metric({"agent RL": records}, "accuracy", png.with_name("accuracy_curve.png"), smooth=0.6)


def main(argv=None):
    p = argparse.ArgumentParser(description="Tool use end to end: data, tool SFT, eval, agent RL, eval")
    p.add_argument("--out_dir", default=str(ROOT / "out" / "tool_recipe"))
    p.add_argument("--device", default=None, help="default: best available (npu, cuda, mps, cpu)")
    p.add_argument("--tasks", default=None, help="another eval task file, scored before and after RL too")
    p.add_argument("--seed", type=int, default=20261207)
    # the model: the quick start's shape
    p.add_argument("--hidden_size", type=int, default=128)
    p.add_argument("--num_hidden_layers", type=int, default=4)
    # copy warm-up and tool SFT
    p.add_argument("--copy_texts", type=int, default=16000, help="copy texts to pretrain on first (0 = skip)")
    p.add_argument("--sft_samples", type=int, default=12000, help="tool SFT conversations (one epoch)")
    p.add_argument("--bare_share", type=float, default=0.7, help="share of them without the tool list")
    p.add_argument("--sft_lr", type=float, default=3e-3)
    p.add_argument("--sft_batch_size", type=int, default=8)
    # agent RL
    p.add_argument("--rl_tasks", type=int, default=2000)
    p.add_argument("--rl_steps", type=int, default=40)
    p.add_argument("--rl_lr", type=float, default=1e-4)
    p.add_argument("--eval_tasks", type=int, default=200)
    args = p.parse_args(argv)

    py, out = sys.executable, Path(args.out_dir)
    size = ["--hidden_size", args.hidden_size, "--num_hidden_layers", args.num_hidden_layers,
            "--num_attention_heads", 4, "--num_key_value_heads", 2]
    device = ["--device", args.device] if args.device else []
    common = [*size, "--save_dir", out, "--checkpoint_dir", out / "checkpoints", "--num_workers", 0, *device]
    data = out / "data"
    t0, times = time.time(), {}

    times["data"] = step("1. data", [py, ROOT / "scripts" / "make_tool_data.py", "--out_dir", data,
                                     "--sft", args.sft_samples, "--rl", args.rl_tasks, "--eval", args.eval_tasks,
                                     "--bare_share", args.bare_share, "--copy", args.copy_texts, "--seed", args.seed])
    start = "none"
    if args.copy_texts:
        times["copy"] = step("2a. copy warm-up (pretraining on copies of random spans)", [
            py, ROOT / "trainer" / "train_pretrain.py", *common, "--save_weight", "copy", "--data_path",
            data / "copy.jsonl", "--epochs", 1, "--batch_size", 16, "--accumulation_steps", 1, "--learning_rate",
            args.sft_lr, "--max_seq_len", 128, "--log_interval", 100, "--save_interval", 0])
        start = "copy"
    times["sft"] = step("2b. tool SFT", [
        py, ROOT / "trainer" / "train_full_sft.py", *common, "--from_weight", start, "--save_weight", "tool_sft",
        "--data_path", data / "sft.jsonl", "--epochs", 1, "--batch_size", args.sft_batch_size,
        "--learning_rate", args.sft_lr, "--max_seq_len", 768, "--log_interval", 100, "--save_interval", 0])

    task_files = [("held-out", data / "eval.jsonl")] + ([("--tasks", Path(args.tasks))] if args.tasks else [])
    results = {}

    def evaluate(weight, tag):
        for name, path in task_files:
            dst = out / f"eval_{weight}_{path.stem}.json"
            times[f"eval_{tag}"] = times.get(f"eval_{tag}", 0) + step(f"eval {weight} on {name} tasks", [
                py, ROOT / "scripts" / "eval_toolcall.py", "--weight", weight, "--save_dir", out, *size, *device,
                "--tasks", path, "--max_turns", 3, "--max_new_tokens", 96, "--output", dst])
            results[(weight, name)] = json.loads(dst.read_text(encoding="utf-8"))["metrics"]

    evaluate("tool_sft", "sft")
    times["agent_rl"] = step("4. agent RL", [
        py, ROOT / "trainer" / "train_agent.py", *common, "--from_weight", "tool_sft", "--data_path",
        data / "agent_rl.jsonl", "--loss_type", "grpo", "--learning_rate", args.rl_lr, "--max_steps", args.rl_steps,
        "--batch_size", 4, "--num_generations", 8, "--max_gen_len", 96, "--max_total_len", 1024,
        "--max_prompt_len", 512, "--max_turns", 3, "--temperature", 1.0, "--beta", 0.02, "--log_interval", 5,
        "--save_interval", 0])
    evaluate("agent", "rl")

    lines = []
    for name, _ in task_files:
        before, after = results[("tool_sft", name)], results[("agent", name)]
        lines += [f"### {name} tasks ({before['tasks']})", "",
                  metrics_table([("tool SFT", before), ("+ agent RL", after)]), ""]
    report = "\n".join(lines)
    reward_curve(out / "logs" / f"agent_{args.hidden_size}.jsonl", out / "reward_curve.png")
    total = time.time() - t0
    write_json({"seconds": total, "step_seconds": times, "settings": vars(args),
                "metrics": {f"{w}/{n}": m for (w, n), m in results.items()}}, out / "summary.json")
    (out / "report.md").write_text(report + "\n", encoding="utf-8")
    print(f"\n{report}\nTool recipe finished in {total:.0f}s. Report: {out / 'report.md'}, reward curve: "
          f"{out / 'reward_curve.png'}")


if __name__ == "__main__":
    main()
