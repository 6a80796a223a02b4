"""Helpers shared by the test files: tiny models, running a script as a subprocess, reading JSONL logs.

Imported as `from helpers import ...`: pytest's default (prepend) import mode puts tests/ on sys.path for every
test module. Fixtures shared the same way (tokenizer, one_thread, run_in_process) are in conftest.py.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.atomic_io import atomic_save  # noqa: E402
from model.checkpoint import half_state_dict  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"   # real data (tests skip when it is absent)
SAMPLE = ROOT / "dataset" / "sample"       # the bundled sample data
MINIMIND3_TOKENIZER = SHARED / "reference" / "minimind3_tokenizer"  # upstream's minimind-3 tokenizer
TINY_CFG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
TINY = ["--hidden_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4", "--num_key_value_heads", "2"]


# ---------------------------------------------------------------------------------------------------- models
def tiny_model(seed: int = 0, **config) -> MiniMindForCausalLM:
    """A seeded random MiniMind of the TINY_CFG size (in train mode); `config` overrides MiniMindConfig fields."""
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig(**{**TINY_CFG, **config}))


def spread_weights_(model, std: float) -> MiniMindForCausalLM:
    """Norm weights uniform in [0.5, 1.5], every other weight N(0, std), in place; returns the model in eval
    mode. Parity tests use it: logits become O(1), and a norm applied in the wrong place, a swapped head order or
    a missing permutation shows up far above the tolerances (with the default init the norms are all 1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, std)
    return model.eval()


def save_tiny(path, seed: int = 0, **config) -> Path:
    """Write `tiny_model(seed, **config)` as a stage would release it (fp16 .pth), e.g. save_dir/full_sft_64.pth."""
    atomic_save(half_state_dict(tiny_model(seed, **config)), path)
    return Path(path)


class ScriptedLM(torch.nn.Module):
    """A stand-in for a *trained* model, for the tool-call / reasoning parsing and display tests: whatever the
    prompt, it writes `script` (one token id per step) and then EOS, through the real decoding loop (engine, KV
    cache, parser).

    A random tiny model cannot be made to emit a tool call, and training one costs seconds; this one reads the
    position of the token it is asked to predict (position ids count real tokens) relative to the prompt."""

    def __init__(self, script, eos_id):
        super().__init__()
        self.config = MiniMindConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the engine a device and dtype
        self.script = list(script) + [eos_id]
        self.start = None

    def forward(self, input_ids, position_ids=None, cache=None, **kwargs):
        b, t = input_ids.shape
        c = self.config
        zeros = torch.zeros(b, c.num_key_value_heads, t, c.head_dim)
        cache.update(zeros, zeros, 0)  # keep the cache's bookkeeping real
        if t > 1:  # prefill: the answer starts right after the prompt
            self.start = position_ids[:, -1] + 1
        step = (position_ids[:, -1] + 1 - self.start).clamp(max=len(self.script) - 1)
        logits = torch.zeros(b, 1, c.vocab_size)
        logits[torch.arange(b), 0, torch.tensor(self.script)[step]] = 100.0
        return SimpleNamespace(logits=logits)


class PromptScriptedLM(ScriptedLM):
    """A ScriptedLM with several scripts: at prefill, `choose(prompt ids of a row) -> index` picks the row's
    script (e.g. by the number of <tool_response> tokens: call a tool first, answer once a result is in the
    prompt). Each row's script index and first answer position are written into its prefill cache columns (later
    columns hold zeros, so a max over columns reads them back), so they follow the row when the batch drops rows
    or admits new ones (continuous batching works)."""

    def __init__(self, scripts, eos_id, choose):
        super().__init__([], eos_id)
        width = max(len(s) for s in scripts) + 1
        self.table = torch.tensor([list(s) + [eos_id] * (width - len(s)) for s in scripts])
        self.choose = choose

    def forward(self, input_ids, position_ids=None, cache=None, **kwargs):
        b, t = input_ids.shape
        c = self.config
        info = torch.zeros(b, c.num_key_value_heads, t, c.head_dim)
        if t > 1:  # prefill
            info[..., 0] = torch.tensor([float(self.choose(row)) for row in input_ids.tolist()])[:, None, None]
            info[..., 1] = (position_ids[:, -1] + 1).float()[:, None, None]
        keys, _ = cache.update(info, info, 0)
        which, start = keys[:, 0, :, 0].amax(1).long(), keys[:, 0, :, 1].amax(1).long()
        step = (position_ids[:, -1] + 1 - start).clamp(max=self.table.shape[1] - 1)
        logits = torch.zeros(b, 1, c.vocab_size)
        logits[torch.arange(b), 0, self.table[which, step]] = 100.0
        return SimpleNamespace(logits=logits)


class StopOn:
    """Our tokenizer, except that `stop_ids` end a turn (the engine takes a list of stop ids). A random model never
    says <|im_end|>; with every eighth token id a stop, its turns end after a few tokens, at different steps in
    different rows, as a trained model's do. The chat template and the tool turns are the real ones."""

    def __init__(self, tokenizer, stop_ids):
        self.tokenizer, self.eos_token_id = tokenizer, stop_ids

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)


def prompt_recorder(tokenizer, reply: str, prompts: list):
    """A PromptScriptedLM that appends each prompt it is given (decoded, special tokens kept) to `prompts` and
    writes `reply`: what a front end really sent to the model."""
    def choose(ids):
        prompts.append(tokenizer.decode(ids))
        return 0
    return PromptScriptedLM([tokenizer(reply, add_special_tokens=False).input_ids], tokenizer.eos_token_id, choose)


EMPTY_THINK = "<think>\n\n</think>\n\n"


def assert_thinking_prompt(prompt: str, which: str, on: bool):
    """The generation prompt a thinking switch must give. Off: both templates pre-fill the empty block (the model
    answers directly). On: ours leaves the plain assistant header (the model may open <think> itself); upstream
    minimind-3's (`which` == "minimind3") opens the block for the model."""
    if not on:
        assert prompt.endswith("<|im_start|>assistant\n" + EMPTY_THINK), prompt[-80:]
    elif which == "minimind3":
        assert prompt.endswith("<|im_start|>assistant\n<think>\n"), prompt[-80:]
    else:
        assert prompt.endswith("<|im_start|>assistant\n") and "<think>" not in prompt, prompt[-80:]


# ---------------------------------------------------------------------------------------------------- scripts
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app):
    """Run a FastAPI `app` with uvicorn on a free 127.0.0.1 port in a background thread; yields the base URL."""
    import uvicorn
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def start_script(argv, cwd, nproc: int = 1, cache=None) -> subprocess.Popen:
    """Start `python argv...` in `cwd` (created if needed); nproc > 1 launches it under torchrun on a free port.

    The child gets one OpenMP thread (several processes share 2 CI cores), no wandb, unbuffered output, and with
    `cache` its own MINIMIND_CACHE folder (else the test session's, from conftest.py). `finish` waits for it.
    """
    cwd = Path(cwd)
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    if cache is not None:
        env["MINIMIND_CACHE"] = str(cache)
    return subprocess.Popen(cmd + [str(a) for a in argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Wait for a started script; with `check`, a non-zero exit fails the test showing the ends of its output."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if check and proc.returncode != 0:
        script = next((Path(a).name for a in proc.args if a.endswith(".py")), proc.args)
        raise AssertionError(f"{script} failed ({proc.returncode}):\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_script(argv, cwd, nproc: int = 1, cache=None, timeout: float = 600,
               check: bool = True) -> subprocess.CompletedProcess:
    """`start_script` + `finish`: run a script to the end; returns its exit code, stdout and stderr."""
    return finish(start_script(argv, cwd, nproc, cache), timeout, check)


def tiny_cpu_flags(save_dir, checkpoint_dir) -> list:
    """Stage-script flags of a tiny fp32 CPU run (no loader workers) writing to the given folders."""
    return [*TINY, "--device", "cpu", "--num_workers", "0", "--dtype", "float32", "--save_dir", save_dir,
            "--checkpoint_dir", checkpoint_dir]


def start_trainer(script: str, *args, tmp: Path, nproc: int = 1, cwd=None, cache=None) -> subprocess.Popen:
    """Start trainer/{script} for a tiny CPU run (plus `args`) writing weights to tmp/out and checkpoints to
    tmp/ckpt, in `cwd` (default: tmp); `nproc` and `cache` as in `start_script`."""
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    argv = [ROOT / "trainer" / script, *tiny_cpu_flags(tmp / "out", tmp / "ckpt"), *args]
    return start_script(argv, cwd or tmp, nproc, cache)


def run_trainer(script: str, *args, tmp: Path, nproc: int = 1, cwd=None, cache=None,
                check: bool = True) -> subprocess.CompletedProcess:
    """`start_trainer` + `finish`."""
    return finish(start_trainer(script, *args, tmp=tmp, nproc=nproc, cwd=cwd, cache=cache), check=check)


def straight_and_resumed(script: str, common: list, straight_args: list, stop_args: list, tmp: Path):
    """The resume check of a stage: run trainer/{script} straight through (`common` + `straight_args`) and, side
    by side, a run stopped early (`common` + `stop_args`, e.g. --max_steps 1), then continue the stopped one with
    `common` + `straight_args` + --from_resume 1. Returns (straight folder, resumed folder, {resume file name:
    (step, consumed)} where the stopped run left off); the folders have out/ and ckpt/ as in `start_trainer`."""
    straight, resumed = Path(tmp) / "straight", Path(tmp) / "resumed"
    for started in [start_trainer(script, *common, *straight_args, tmp=straight),
                    start_trainer(script, *common, *stop_args, tmp=resumed)]:
        finish(started)
    stopped = {f.name: (ck["step"], ck["consumed"]) for f in sorted((resumed / "ckpt").glob("*_resume.pth"))
               for ck in [torch.load(f, map_location="cpu", weights_only=True)]}
    run_trainer(script, *common, *straight_args, "--from_resume", 1, tmp=resumed)
    return straight, resumed, stopped


# ---------------------------------------------------------------------------------------------------- JSONL
def write_jsonl(path, records) -> Path:
    """One JSON object per line (UTF-8, not ASCII-escaped); a str record is written as is (a malformed line)."""
    path = Path(path)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return path


def read_jsonl(path) -> list:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def train_log(save_dir, name: str) -> list:
    """The metric rows a stage logged to {save_dir}/logs/{name}.jsonl (trainer_utils.TrainLogger)."""
    return read_jsonl(Path(save_dir) / "logs" / f"{name}.jsonl")
