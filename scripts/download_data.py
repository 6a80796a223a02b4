"""Download MiniMind's training data files by name from ModelScope or Hugging Face into dataset/.

The upstream data sets live in one repository per hub, with every file at the top level:

  ModelScope    gongjy/minimind_dataset          (default; fast inside mainland China)
  Hugging Face  jingyaogong/minimind_dataset

    python scripts/download_data.py --list
    python scripts/download_data.py --names pretrain_hq sft_mini_512            # the quick-start pair
    python scripts/download_data.py --names pretrain_t2t_mini sft_t2t_mini      # minimind-3's quick-start pair
    python scripts/download_data.py --names rlaif agent_rl agent_rl_math        # minimind-3's RL / agentic RL
    python scripts/download_data.py --names dpo,rlaif-mini --source huggingface
    HF_ENDPOINT=https://hf-mirror.com python scripts/download_data.py --names lora_identity --source huggingface

Files already present in --out_dir are skipped (--force downloads again). Interrupted downloads resume: both
hubs' clients keep the partial file and continue it on the next run. Needs `pip install modelscope` for
ModelScope (imported only when used); huggingface_hub comes with transformers.
"""
import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]

REPOS = {"modelscope": "gongjy/minimind_dataset", "huggingface": "jingyaogong/minimind_dataset"}

# name -> (file in the repository, approximate size, what it is for). Sizes are the upstream release's. The
# repository holds both generations' files: MiniMind2's (pretrain_hq, sft_*, rlaif-mini, r1_mix) and
# minimind-3's (*_t2t*, rlaif, agent_rl*); dpo and lora_* serve both.
DATASETS: Dict[str, tuple] = {
    "pretrain_hq": ("pretrain_hq.jsonl", "1.6 GB", "pretraining text (trainer/train_pretrain.py)"),
    "sft_mini_512": ("sft_mini_512.jsonl", "1.2 GB", "SFT, the quick-start choice (train_full_sft.py)"),
    "sft_512": ("sft_512.jsonl", "7.5 GB", "SFT, conversations up to 512 characters"),
    "sft_1024": ("sft_1024.jsonl", "5.6 GB", "SFT, conversations up to 1024 characters"),
    "sft_2048": ("sft_2048.jsonl", "9 GB", "SFT, conversations up to 2048 characters (long context)"),
    "dpo": ("dpo.jsonl", "55 MB", "preference pairs (train_dpo.py)"),
    "rlaif-mini": ("rlaif-mini.jsonl", "1 MB", "RL prompts (train_ppo.py / train_grpo.py / train_spo.py)"),
    "r1_mix_1024": ("r1_mix_1024.jsonl", "340 MB", "reasoning distillation (train_reason.py)"),
    "lora_identity": ("lora_identity.jsonl", "23 KB", "LoRA: the assistant's identity (train_lora.py)"),
    "lora_medical": ("lora_medical.jsonl", "34 MB", "LoRA: a medical Q&A domain (train_lora.py)"),
    "pretrain_t2t_mini": ("pretrain_t2t_mini.jsonl", "1.2 GB", "minimind-3: pretraining text, the quick-start choice"),
    "pretrain_t2t": ("pretrain_t2t.jsonl", "10 GB", "minimind-3: pretraining text, full"),
    "sft_t2t_mini": ("sft_t2t_mini.jsonl", "1.6 GB", "minimind-3: SFT with tool-call and reasoning turns, quick start"),
    "sft_t2t": ("sft_t2t.jsonl", "14 GB", "minimind-3: SFT, full"),
    "rlaif": ("rlaif.jsonl", "24 MB", "minimind-3: RL prompts (train_ppo.py / train_grpo.py)"),
    "agent_rl": ("agent_rl.jsonl", "86 MB", "minimind-3: agentic RL, tools + gt answers (AgentRLDataset)"),
    "agent_rl_math": ("agent_rl_math.jsonl", "18 MB", "minimind-3: agentic RL on math, verifiable answers"),
}
# "rlaif" was an alias of rlaif-mini before minimind-3 published its own rlaif.jsonl; it now names that file.
ALIASES = {"rlaif_mini": "rlaif-mini", "r1_mix": "r1_mix_1024", "pretrain": "pretrain_hq"}

MIRROR_HINT = {
    "huggingface": "check your network or proxy, or use a mirror: HF_ENDPOINT=https://hf-mirror.com python "
                   "scripts/download_data.py ... (or --source modelscope)",
    "modelscope": "check your network or proxy, or try --source huggingface (with HF_ENDPOINT=https://hf-mirror.com "
                  "if huggingface.co is blocked)",
}


class DownloadError(Exception):
    """A user-facing failure: printed as one `error:` line."""


def resolve_names(names: List[str]) -> List[str]:
    """'pretrain_hq', 'pretrain_hq.jsonl', 'dpo,sft_512' and the aliases -> canonical names, in order, no repeats."""
    out = []
    for raw in names:
        for name in filter(None, (n.strip() for n in raw.split(","))):
            key = name[:-len(".jsonl")] if name.endswith(".jsonl") else name
            key = ALIASES.get(key, key)
            if key not in DATASETS:
                raise DownloadError(f"unknown data set {name!r}; known: {', '.join(DATASETS)} (see --list)")
            if key not in out:
                out.append(key)
    return out


def target_path(name: str, out_dir) -> Path:
    return Path(out_dir) / DATASETS[name][0]


def listing() -> str:
    lines = [f"{'name':<18} {'file':<24} {'size':>7}  use",
             *(f"{n:<18} {f:<24} {s:>7}  {u}" for n, (f, s, u) in DATASETS.items()),
             "", f"sources: modelscope = {REPOS['modelscope']}, huggingface = {REPOS['huggingface']}"]
    return "\n".join(lines)


def is_connection_error(exc: BaseException) -> bool:
    """True if the failure (or anything in its cause chain) means the hub could not be reached.

    Covers socket/OS-level errors, requests / httpx / urllib3 connection and timeout errors (matched by class
    name, so neither library has to be imported) and huggingface_hub's "offline and not in the cache" error.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, socket.timeout, socket.gaierror, TimeoutError)):
            return True
        names = " ".join(c.__name__ for c in type(exc).__mro__)
        if any(k in names for k in ("ConnectError", "ConnectionError", "ConnectTimeout", "Timeout",
                                    "NewConnectionError", "MaxRetryError", "LocalEntryNotFoundError",
                                    "OfflineModeIsEnabled")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def fetch(source: str, filename: str, out_dir: Path, force: bool = False) -> Path:
    """Download one file from the hub into out_dir (resumable); returns its local path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if source == "huggingface":
        from huggingface_hub import hf_hub_download
        # local_dir: the file lands at out_dir/filename (partial downloads are kept under out_dir/.cache and
        # resumed by the next call).
        return Path(hf_hub_download(repo_id=REPOS[source], filename=filename, repo_type="dataset",
                                    local_dir=str(out_dir), force_download=force))
    if source == "modelscope":
        try:
            from modelscope.hub.file_download import dataset_file_download
        except ImportError:
            raise DownloadError("the modelscope package is not installed: `pip install modelscope`, or use "
                                "--source huggingface") from None
        return Path(dataset_file_download(REPOS[source], filename, local_dir=str(out_dir)))
    raise DownloadError(f"unknown --source {source!r}")


def download(names: List[str], source: str, out_dir, force: bool = False, log=print) -> List[Path]:
    out_dir = Path(out_dir)
    paths = []
    for name in names:
        filename, size, _ = DATASETS[name]
        dest = target_path(name, out_dir)
        if dest.is_file() and dest.stat().st_size > 0 and not force:
            log(f"{name}: {dest} exists, skipped (--force to download again)")
            paths.append(dest)
            continue
        log(f"{name}: downloading {filename} (~{size}) from {source} {REPOS[source]} -> {out_dir}")
        try:
            path = fetch(source, filename, out_dir, force)
        except DownloadError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below; anything unexpected keeps its traceback
            if is_connection_error(e):
                offline = " with HF_HUB_OFFLINE set" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") \
                    and source == "huggingface" else ""
                raise DownloadError(f"cannot reach {source}{offline} to download {filename} "
                                    f"({type(e).__name__}); {MIRROR_HINT[source]}") from None
            raise
        if path.resolve() != dest.resolve() and path.is_file():  # a client that nests files: move into place
            path.replace(dest)
        log(f"{name}: done -> {dest}")
        paths.append(dest)
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Download MiniMind data sets", epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", nargs="*", default=[], help="data set names (space- or comma-separated); see --list")
    p.add_argument("--source", type=str, default="modelscope", choices=sorted(REPOS))
    p.add_argument("--out_dir", type=str, default=str(ROOT / "dataset"))
    p.add_argument("--force", action="store_true", help="download again even if the file exists")
    p.add_argument("--list", action="store_true", help="show the available data sets and exit")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print(listing())
        return 0
    try:
        names = resolve_names(args.names)
        if not names:
            raise DownloadError("nothing to download: pass --names (e.g. --names pretrain_hq sft_mini_512) "
                                "or --list")
        download(names, args.source, args.out_dir, args.force)
        return 0
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
