"""Training report: curves (PNG) and a markdown report card from the metrics every stage logs.

Every stage appends one JSON row per log interval to {save_dir}/logs/{stage}_{hidden}[_moe].jsonl
(trainer_utils.TrainLogger): step, epoch, lr, grad_norm, tokens_per_s, loss, the stage's own metrics
(aux_loss, reward, kl, ...) and a unix time. This script reads one or more of those logs (or whole folders),
draws every numeric metric against the step (one subplot each; several runs overlaid), and writes report.md:

  runs        steps, epochs, wall time, mean tokens/s, first / final / best loss of each run
  config      the run's flags, from its resume checkpoint (checkpoints/{run}_resume.pth stores `args`)
  model       parameter count, from the checkpoint or the weights (out/{run}.pth)
  data        records and token counts of --data files (scripts/data_stats.py)
  evaluation  results JSON written by scripts/eval_benchmark.py --output (given with --eval, or found as
              *.json next to the logs)

    python scripts/report.py out/logs                                  # every run in the folder
    python scripts/report.py out/logs/pretrain_512.jsonl out/logs/full_sft_512.jsonl --out_dir out/report
    python scripts/report.py out/logs --data dataset/pretrain_hq.jsonl --eval out/eval/ceval.json
    python scripts/report.py out/logs/pretrain_64.jsonl --out_dir images --prefix example_ --per_metric

Outputs: {out_dir}/{prefix}curves.png, {out_dir}/{prefix}report.md and, with --per_metric,
{out_dir}/{prefix}{metric}.png for each metric.
"""
import argparse
import datetime
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model.atomic_io import atomic_write_text  # noqa: E402
from model.errors import USER_ERRORS, UserError, report_user_error  # noqa: E402
from scripts.script_utils import pyplot, save_figure  # noqa: E402

# Plotted first and in this order; every other numeric column follows alphabetically.
PREFERRED = ("loss", "lr", "tokens_per_s", "grad_norm")
NOT_METRICS = ("step", "epoch", "time")


class ReportError(UserError):
    """A user mistake (no logs, unreadable file): one `error:` line."""


# ================================================================================================================
# Reading logs
# ================================================================================================================
def read_log(path) -> List[dict]:
    """Rows of one metrics log, sorted by step. A resumed run that re-logs a step keeps the later row; a torn or
    malformed line (a crash mid-write) is skipped with a warning naming file:line."""
    path = Path(path)
    by_step: Dict[float, dict] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                print(f"warning: {path}:{lineno}: skipped, invalid JSON ({e})", file=sys.stderr)
                continue
            if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
                print(f"warning: {path}:{lineno}: skipped, not a metrics row with a 'step'", file=sys.stderr)
                continue
            by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]


def find_inputs(paths: List[str]) -> tuple:
    """Files and folders -> (metrics logs, eval-result JSON files). A folder contributes its *.jsonl and, if it
    has one, its logs/ subfolder, plus *.json files that look like eval_benchmark results."""
    logs, evals = [], []
    for p in map(Path, paths):
        if p.is_dir():
            for d in (p, p / "logs"):
                if d.is_dir():
                    logs += sorted(d.glob("*.jsonl"))
                    evals += [j for j in sorted(d.glob("*.json")) if _is_eval_json(j)]
        elif p.is_file():
            (evals if p.suffix == ".json" else logs).append(p)
        else:
            raise ReportError(f"not found: {p}")
    seen, unique = set(), []
    for p in logs:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique, evals


def _is_eval_json(path: Path) -> bool:
    try:
        return "task" in json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError, TypeError):
        return False


def metric_names(runs: Dict[str, List[dict]]) -> List[str]:
    names = set()
    for rows in runs.values():
        for r in rows:
            names.update(k for k, v in r.items()
                         if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool))
    return [m for m in PREFERRED if m in names] + sorted(names - set(PREFERRED))


def series(rows: List[dict], key: str) -> tuple:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))
           and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def ema(values: List[float], alpha: float) -> List[float]:
    """Exponential moving average with bias correction, so the first points are not dragged towards zero."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha ** i))
    return out


# ================================================================================================================
# Summaries
# ================================================================================================================
def summarize(rows: List[dict]) -> dict:
    """Steps, wall time, throughput and losses of one run."""
    s = {"rows": len(rows), "steps": rows[-1]["step"] if rows else 0,
         "epochs": rows[-1].get("epoch") if rows else None}
    times = [r["time"] for r in rows if isinstance(r.get("time"), (int, float))]
    if len(times) >= 2:
        span = times[-1] - times[0]
        # The first row is logged after step 1 (or the first interval): extrapolate the steps before it.
        per_step = span / max(1, rows[-1]["step"] - rows[0]["step"])
        s["wall_time_s"] = span + per_step * rows[0]["step"]
    tok = [r["tokens_per_s"] for r in rows if isinstance(r.get("tokens_per_s"), (int, float))]
    if tok:
        s["mean_tokens_per_s"] = sum(tok[1:]) / len(tok[1:]) if len(tok) > 1 else tok[0]  # skip warm-up row
    if len(times) == len(rows) and len(rows) >= 2 and len(tok) == len(rows):
        # tokens_per_s of a row is the rate over the interval ending at it.
        s["tokens_seen"] = sum(t * (times[i] - times[i - 1]) for i, t in enumerate(tok) if i > 0)
    _, loss = series(rows, "loss")
    if loss:
        tail = loss[-max(1, len(loss) // 10):]
        s.update(first_loss=loss[0], final_loss=loss[-1], min_loss=min(loss), final_loss_mean10=sum(tail) / len(tail))
    _, lr = series(rows, "lr")
    if lr:
        s["final_lr"] = lr[-1]
    return s


def fmt_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:.{digits}f}"
    return str(v)


def count_parameters(state: dict) -> int:
    """Parameters of a state dict, counting tied tensors (lm_head = embeddings) once."""
    import torch
    seen, total = set(), 0
    emb = state.get("model.embed_tokens.weight")
    for k, v in state.items():
        if not torch.is_tensor(v) or not v.is_floating_point():
            continue
        if k == "lm_head.weight" and emb is not None and v.shape == emb.shape and torch.equal(v, emb):
            continue  # tied: half-precision .pth files store the shared matrix twice
        key = (v.data_ptr(), v.numel()) if v.numel() else (k, 0)
        if key in seen:
            continue
        seen.add(key)
        total += v.numel()
    return total


def load_run_info(run: str, checkpoint_dir: Optional[Path], weights_dir: Optional[Path],
                  checkpoint: Optional[Path] = None) -> dict:
    """Config and parameter count of a run from its resume checkpoint, else the parameter count from its weights."""
    import torch
    info = {}
    ck_path = checkpoint or (checkpoint_dir / f"{run}_resume.pth" if checkpoint_dir else None)
    if ck_path is not None and Path(ck_path).is_file():
        ck = torch.load(ck_path, map_location="cpu", weights_only=True)
        info["config"] = dict(ck.get("args", {}))
        info["config_source"] = str(ck_path)
        if isinstance(ck.get("model"), dict):
            info["parameters"] = count_parameters(ck["model"])
            info["parameters_source"] = str(ck_path)
    w_path = weights_dir / f"{run}.pth" if weights_dir else None
    if "parameters" not in info and w_path is not None and w_path.is_file():
        state = torch.load(w_path, map_location="cpu", weights_only=True)
        info["parameters"] = count_parameters(state)
        info["parameters_source"] = str(w_path)
    return info


# ================================================================================================================
# Plots
# ================================================================================================================
def _draw(ax, runs: Dict[str, List[dict]], metric: str, smooth: float):
    for i, (name, rows) in enumerate(runs.items()):
        x, y = series(rows, metric)
        if not x:
            continue
        color = f"C{i % 10}"
        if smooth > 0 and len(y) > 10 and "loss" in metric:
            ax.plot(x, y, color=color, alpha=0.25, linewidth=1)
            ax.plot(x, ema(y, smooth), color=color, linewidth=1.5, label=name)
        else:
            ax.plot(x, y, color=color, linewidth=1.5, label=name, marker="." if len(x) < 30 else None)
    ax.set_title(metric, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    if metric == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def plot_curves(runs: Dict[str, List[dict]], metrics: List[str], path, smooth: float = 0.0, dpi: int = 80) -> Path:
    ncols = 2 if len(metrics) <= 4 else 3
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = pyplot().subplots(nrows, ncols, figsize=(4.6 * ncols, 3.0 * nrows), dpi=dpi, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        _draw(ax, runs, metric, smooth)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)  # run names (colours are the same in every subplot)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_metric(runs: Dict[str, List[dict]], metric: str, path, smooth: float = 0.0, dpi: int = 80) -> Path:
    fig, ax = pyplot().subplots(figsize=(5.5, 3.2), dpi=dpi)
    _draw(ax, runs, metric, smooth)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# ================================================================================================================
# Markdown
# ================================================================================================================
def md_table(header: List[str], rows: List[list]) -> str:
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def eval_section(results: List[tuple]) -> str:
    """Markdown for eval_benchmark.py result files: (path, data) pairs."""
    out = []
    for path, r in results:
        task = r.get("task")
        model = r.get("model", "?")
        if task == "ppl":
            out.append(f"**Perplexity** of `{model}` on `{r.get('data')}`: **{r['ppl']:.3f}** "
                       f"({r['tokens']:,} tokens, {r['documents']:,} documents, context {r['max_seq_len']}, "
                       f"stride {r['stride']}) — `{path}`")
        elif task == "mc":
            o = r["overall"]
            out.append(f"**Multiple choice** ({r.get('format')}, {r.get('shots', 0)}-shot"
                       f"{', chat' if r.get('chat') else ''}) of `{model}` on `{r.get('data')}`: accuracy "
                       f"**{o['acc']:.4f}** ({o['correct']}/{o['n']}) vs chance {o['chance']:.4f} — `{path}`")
            subs = r.get("subjects", [])
            if 1 < len(subs) <= 60:
                out.append(md_table(["subject", "n", "acc", "chance"],
                                    [[s["subject"], s["n"], f"{s['acc']:.4f}", f"{s['chance']:.4f}"] for s in subs]))
        elif task == "gsm8k":
            o = r["overall"]
            out.append(f"**GSM8K** (greedy, exact numeric match) of `{model}` on `{r.get('data')}`: accuracy "
                       f"**{o['acc']:.4f}** ({o['correct']}/{o['n']}; no number in {o['no_number']}) — `{path}`")
        elif task == "context_sweep":
            rows = [[L, f"{a:.3f}", f"{b:.3f}"] for L, a, b in zip(r["lengths"], r["ppl"]["no_scaling"],
                                                                  r["ppl"]["yarn"])]
            out.append(f"**PPL vs context length** of `{model}` on `{r.get('data')}` — `{path}`")
            out.append(md_table(["context", "PPL (RoPE)", "PPL (YaRN)"], rows))
        else:
            out.append(f"`{path}`: unknown result type {task!r}")
    return "\n\n".join(out)


def write_report(runs: Dict[str, List[dict]], log_paths: Dict[str, Path], out_dir: Path, prefix: str = "",
                 title: str = "", infos: Optional[Dict[str, dict]] = None, data_rows: Optional[List[dict]] = None,
                 evals: Optional[List[tuple]] = None, smooth: float = 0.0, per_metric: bool = False,
                 dpi: int = 80) -> dict:
    """Draw the curves and write the markdown; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = metric_names(runs)
    if not metrics:
        raise ReportError("the logs hold no numeric metrics")
    written = {"curves": plot_curves(runs, metrics, out_dir / f"{prefix}curves.png", smooth, dpi)}
    if per_metric:
        for m in metrics:
            written[m] = plot_metric(runs, m, out_dir / f"{prefix}{m}.png", smooth, dpi)
    infos = infos or {}

    md = [f"# {title or 'Training report'}", "",
          f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by `scripts/report.py` from "
          + ", ".join(f"`{p}`" for p in log_paths.values()) + ".", "", "## Runs", ""]
    rows = []
    for name, r in runs.items():
        s = summarize(r)
        rows.append([name, s["steps"], fmt(s.get("epochs")), fmt_time(s.get("wall_time_s")),
                     f"{s['mean_tokens_per_s']:,.0f}" if "mean_tokens_per_s" in s else "-",
                     f"{s['tokens_seen'] / 1e6:.2f}M" if "tokens_seen" in s else "-",
                     fmt(s.get("first_loss")), fmt(s.get("final_loss")), fmt(s.get("final_loss_mean10")),
                     fmt(s.get("min_loss")), fmt(s.get("final_lr"))])
    md += [md_table(["run", "steps", "epochs", "wall time", "mean tokens/s", "tokens", "first loss", "final loss",
                     "final loss (last 10%)", "best loss", "final lr"], rows), "",
           "Wall time spans the first to the last log row, extrapolated over the steps before the first row; "
           "tokens are tokens/s integrated over the logged intervals (real tokens, padding excluded).", "",
           f"![training curves]({written['curves'].name})", ""]

    if any(i.get("parameters") or i.get("config") for i in infos.values()):
        md += ["## Model", ""]
        md.append(md_table(["run", "parameters", "source"],
                           [[n, f"{i['parameters']:,} ({i['parameters'] / 1e6:.2f}M)", f"`{i['parameters_source']}`"]
                            for n, i in infos.items() if i.get("parameters")]))
        md.append("")
        for n, i in infos.items():
            cfg = i.get("config")
            if cfg:
                md += [f"<details><summary>config of {n} (from <code>{i['config_source']}</code>)</summary>", "",
                       md_table(["flag", "value"], [[f"--{k}", v] for k, v in sorted(cfg.items())]), "",
                       "</details>", ""]
    if data_rows:
        md += ["## Data", "", md_table(
            ["file", "kind", "records", "bad lines", "tokens", "mean tokens", "p95 tokens", "chars/token"],
            [[f"`{d['path']}`", d["kind"], f"{d['records']:,}", d["bad_lines"], f"{d['tokens']:,}",
              f"{d['mean']:.1f}", d["percentiles"]["p95"], f"{d['chars_per_token']:.2f}"] for d in data_rows]), ""]
    if evals:
        md += ["## Evaluation", "", eval_section(evals), ""]
    written["report"] = atomic_write_text(out_dir / f"{prefix}report.md", "\n".join(md) + "\n")
    return written


# ================================================================================================================
# Command line
# ================================================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MiniMind training report", epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", help="metrics logs (*.jsonl), eval results (*.json) or folders of them")
    p.add_argument("--out_dir", type=str, default=None, help="default: the first log's folder / report")
    p.add_argument("--prefix", type=str, default="", help="prefix of every written file name")
    p.add_argument("--title", type=str, default="")
    p.add_argument("--checkpoint_dir", type=str, default=str(ROOT / "checkpoints"),
                   help="where {run}_resume.pth (config, parameters) is looked for")
    p.add_argument("--checkpoint", type=str, default=None, help="one resume checkpoint, for a single run")
    p.add_argument("--weights_dir", type=str, default=None,
                   help="where {run}.pth is looked for (default: the folder above each logs/ folder)")
    p.add_argument("--data", nargs="*", default=[], help="data files to describe (records, tokens)")
    p.add_argument("--data_sample", type=int, default=0, help="estimate data token counts from N records")
    p.add_argument("--tokenizer_path", type=str, default=str(ROOT / "model"))
    p.add_argument("--eval", nargs="*", default=[], help="eval_benchmark.py --output JSON files")
    p.add_argument("--smooth", type=float, default=0.0, help="EMA factor for loss curves (e.g. 0.9)")
    p.add_argument("--per_metric", action="store_true", help="also write one PNG per metric")
    p.add_argument("--dpi", type=int, default=80)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        log_files, eval_files = find_inputs(args.logs)
        eval_files += [Path(e) for e in args.eval]
        if not log_files:
            raise ReportError(f"no metrics logs (*.jsonl) in {args.logs}")
        runs, paths = {}, {}
        for f in log_files:
            rows = read_log(f)
            if not rows:
                print(f"warning: {f}: no metrics rows, skipped", file=sys.stderr)
                continue
            name = f.stem if f.stem not in runs else f"{f.parent.name}/{f.stem}"
            runs[name], paths[name] = rows, f
        if not runs:
            raise ReportError("every log is empty")
        out_dir = Path(args.out_dir) if args.out_dir else log_files[0].parent / "report"
        infos = {}
        for name, f in paths.items():
            wdir = Path(args.weights_dir) if args.weights_dir else (
                f.parent.parent if f.parent.name == "logs" else f.parent)
            ck = Path(args.checkpoint) if args.checkpoint and len(runs) == 1 else None
            infos[name] = load_run_info(Path(name).name, Path(args.checkpoint_dir), wdir, ck)
        data_rows = []
        if args.data:
            from scripts.data_stats import describe_file, load_tokenizer
            tok = load_tokenizer(args.tokenizer_path)
            data_rows = [describe_file(d, tok, sample=args.data_sample) for d in args.data]
        evals = []
        for e in eval_files:
            try:
                evals.append((e, json.loads(Path(e).read_text(encoding="utf-8"))))
            except (OSError, ValueError) as err:
                raise ReportError(f"{e}: cannot read eval results ({err})") from None
        written = write_report(runs, paths, out_dir, args.prefix, args.title, infos, data_rows, evals, args.smooth,
                               args.per_metric, args.dpi)
        for what, p in written.items():
            print(f"{what}: {p}")
        return 0
    except USER_ERRORS as e:  # one `error:` line, exit status 2
        return report_user_error(e)


if __name__ == "__main__":
    sys.exit(main())
