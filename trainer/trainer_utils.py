"""Everything the stage scripts share, written once.

A stage script (train_pretrain.py, train_full_sft.py, ...) holds only its own algorithm: its dataset, its
loss, its flags. This module holds the rest:

  paths          repo-root-relative defaults, weight / resume file names
  arguments      the upstream-compatible common flags (`add_common_args`)
  devices        NPU -> CUDA -> MPS -> CPU, dtype choice, autocast, GradScaler
  distributed    torchrun / DDP init and cleanup (nccl, hccl or gloo)
  model          config from flags, `init_model` (strict weight loading + tokenizer)
  stage setup    `setup_stage` (DDP, seed, model, tokenizer), `padded_dataset` (dataset + collate + lengths)
  optimisation   AdamW, cosine LR with a floor, accumulation + clipping (`Optimizer step` in `TrainLoop`)
  data order     `ResumableSampler`: the same shuffled order every run, skipping what a resume already consumed
  checkpoints    half-precision weights, full resume state, written atomically (`atomic_save`, model/atomic_io.py)
  logging        rank-0 console + progress bar + JSONL metrics + optional wandb / swanlab
  the loop       `TrainLoop.run`: the loop shared by pretrain, SFT, LoRA, DPO, distillation and reasoning
                 (the RL stages drive its pieces from trainer/rl_utils.run_rl)
"""
import argparse
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dataset.lm_dataset import PadCollator, doc_attention_mask  # noqa: E402
from model.atomic_io import atomic_save  # noqa: E402,F401  (re-exported: scripts and tests import it from here)
from model.checkpoint import (DEFAULT_CHECKPOINTS, DEFAULT_OUT, DEFAULT_TOKENIZER, WeightLoadError,  # noqa: E402,F401
                              add_model_size_args, half_state_dict,
                              load_state_dict_file, load_tokenizer, load_weights, model_config_from_args,
                              resume_path, unwrap, weight_name, weight_path)
from model.errors import run_main  # noqa: E402,F401
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.runtime import (autocast_context, cpu_has_native_bf16, default_device, is_npu_available,  # noqa: E402,F401
                           resolve_dtype, setup_seed)


# ================================================================================================================
# Arguments
# ================================================================================================================
def add_common_args(parser: argparse.ArgumentParser, *, stage: str, data_path: str, epochs=1, batch_size=32,
                    learning_rate=5e-4, max_seq_len=512, from_weight="none", accumulation_steps=1,
                    save_interval=1000, log_interval=100):
    """The flags every stage shares, with the original MiniMind's names. Paths default to the repo root."""
    p = parser
    p.add_argument("--save_dir", type=str, default=str(DEFAULT_OUT), help="where weights are written")
    p.add_argument("--save_weight", type=str, default=stage, help="prefix of the saved weight file")
    p.add_argument("--checkpoint_dir", type=str, default=str(DEFAULT_CHECKPOINTS), help="resume checkpoints")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch_size", type=int, default=batch_size, help="per-device micro-batch size")
    p.add_argument("--learning_rate", type=float, default=learning_rate)
    p.add_argument("--min_lr_ratio", type=float, default=0.1, help="cosine schedule floor, as a fraction of lr")
    p.add_argument("--warmup_steps", type=int, default=0)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--device", type=str, default=None, help="default: npu, then cuda, then mps, then cpu")
    p.add_argument("--dtype", type=str, default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="auto = bf16 where supported (NPU, CUDA, CPUs with AVX512-BF16/AMX/Arm BF16), "
                        "fp16 + GradScaler on older GPUs, else fp32")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--accumulation_steps", type=int, default=accumulation_steps)
    p.add_argument("--grad_clip", type=float, default=1.0)
    p.add_argument("--log_interval", type=int, default=log_interval)
    p.add_argument("--save_interval", type=int, default=save_interval)
    add_model_size_args(p)  # --preset, --hidden_size, --num_hidden_layers, ..., --use_moe
    p.add_argument("--max_seq_len", type=int, default=max_seq_len)
    p.add_argument("--data_path", type=str, default=str(ROOT / data_path))
    p.add_argument("--tokenizer_path", type=str, default=str(DEFAULT_TOKENIZER))
    p.add_argument("--from_weight", type=str, default=from_weight,
                   help="stage name to start from (out/{name}_{hidden}.pth), a .pth path, or 'none'")
    p.add_argument("--from_resume", type=int, default=0, choices=[0, 1], help="1 = continue from checkpoints/")
    p.add_argument("--use_wandb", action="store_true", help="log to wandb (or swanlab, see --logger)")
    p.add_argument("--wandb_project", type=str, default=f"MiniMind-{stage}")
    p.add_argument("--logger", type=str, default="wandb", choices=["wandb", "swanlab"])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max_steps", type=int, default=0, help="stop after this many optimizer steps (0 = no limit)")
    p.add_argument("--skip_bad_lines", action="store_true", help="skip malformed JSONL lines instead of failing")
    p.add_argument("--pad_to_max", action="store_true",
                   help="pad every sample to --max_seq_len like the original MiniMind (slower; for comparison)")
    p.add_argument("--group_by_length", type=int, default=1, choices=[0, 1],
                   help="batch samples of similar length together so dynamic padding wastes little")
    p.add_argument("--use_compile", type=int, default=0, choices=[0, 1],
                   help="torch.compile the model (dense and MoE; the first steps are slow while it compiles)")
    p.add_argument("--compile", dest="use_compile", action="store_const", const=1, help="same as --use_compile 1")
    return p


# ================================================================================================================
# Devices, precision, distributed
# ================================================================================================================
@dataclass
class DistState:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world_size > 1


def init_distributed(device_arg: Optional[str] = None) -> DistState:
    """Start the process group when launched by torchrun; pick this process's device.

    RANK decides rank-0 work (logging, saving), LOCAL_RANK the device on this node, so multi-node runs
    (`torchrun --nnodes N --node_rank R --master_addr HOST ...`) work unchanged.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = device_arg or default_device()
    if device.startswith("npu"):
        import torch_npu  # noqa: F401  registers the "npu" device type with torch
    if world_size <= 1:
        return DistState(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    kind = torch.device(device).type
    if kind == "cuda":
        device, backend = f"cuda:{local_rank}", "nccl"
        torch.cuda.set_device(local_rank)
    elif kind == "npu":
        device, backend = f"npu:{local_rank}", "hccl"
        torch.npu.set_device(local_rank)
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistState(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed():
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ================================================================================================================
# Model and weights
# ================================================================================================================
def init_model(config: MiniMindConfig, from_weight: str = "none", save_dir=DEFAULT_OUT,
               tokenizer_path=DEFAULT_TOKENIZER, device="cpu", log=print):
    """Build the model, load `from_weight` strictly, and load the tokenizer; check they agree on the vocab."""
    tokenizer = load_tokenizer(tokenizer_path)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"tokenizer at {tokenizer_path} has {len(tokenizer)} tokens but the model's vocab_size "
                         f"is {config.vocab_size}")
    model = MiniMindForCausalLM(config)
    if from_weight and from_weight != "none":
        path = Path(from_weight) if from_weight.endswith(".pth") else weight_path(save_dir, from_weight, config)
        if not path.is_file():
            raise FileNotFoundError(
                f"--from_weight {from_weight}: {path} not found. Train that stage first, point --save_dir at the "
                f"folder holding it, check --hidden_size/--use_moe, or pass --from_weight none.")
        load_weights(model, path, f"--from_weight {from_weight}")
        log(f"loaded weights from {path}")
    n = sum(p.numel() for p in model.parameters())
    log(f"model: {n / 1e6:.3f}M parameters (hidden={config.hidden_size}, layers={config.num_hidden_layers}, "
        f"moe={int(config.use_moe)})")
    return model.to(device), tokenizer


# ================================================================================================================
# Stage setup: what every stage script does before its own part
# ================================================================================================================
def setup_stage(args):
    """Process group, seed, rank-0 logging, then the model (from --from_weight) and the tokenizer.

    Returns (dist_state, model, tokenizer, log); `log` prints on rank 0 only. The seed is set before the model
    is built, so every rank starts from identical weights (and identical LoRA adapters / critic heads).
    """
    dist_state = init_distributed(args.device)
    setup_seed(args.seed)
    log = print if dist_state.is_main else (lambda *a, **k: None)
    model, tokenizer = init_model(model_config_from_args(args), args.from_weight, args.save_dir,
                                  args.tokenizer_path, dist_state.device, log)
    return dist_state, model, tokenizer, log


def padded_dataset(args, tokenizer, dataset_cls):
    """One record per row, padded per batch: `dataset_cls(--data_path)`, its PadCollator and, unless
    --group_by_length 0 or --pad_to_max, the record sizes that turn on length-grouped batches (similar lengths
    in a batch: little compute is spent on padding). Returns (dataset, collate, lengths) for `TrainLoop.run`."""
    dataset = dataset_cls(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)
    collate = PadCollator(tokenizer.pad_token_id, pad_to=args.max_seq_len if args.pad_to_max else None,
                          pad_multiple=64 if args.use_compile else 1)
    lengths = dataset.data.byte_lengths() if args.group_by_length and not args.pad_to_max else None
    return dataset, collate, lengths


# ================================================================================================================
# Checkpoints (atomic writes: `atomic_save` from model/atomic_io.py)
# ================================================================================================================
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ================================================================================================================
# Learning rate
# ================================================================================================================
def get_lr(step: int, total_steps: int, lr: float, min_lr_ratio: float = 0.1, warmup_steps: int = 0) -> float:
    """Linear warmup, then cosine decay from lr down to a floor of lr * min_lr_ratio at the last step."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    floor = lr * min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ================================================================================================================
# Data order
# ================================================================================================================
class ResumableSampler(Sampler):
    """A seeded shuffle shared by all ranks, dealt out in micro-batches, that can start mid-epoch.

    The global order of an epoch depends only on (seed, epoch, batch_size, lengths). It is cut into chunks of
    `batch_size` samples and chunk c goes to rank c % world_size, so one micro-batch step of all ranks consumes
    batch_size * world_size consecutive samples. Resuming skips the first `consumed` *global* samples: a run
    resumed on a different number of processes continues exactly where the old one stopped, in the same order.

    With `lengths` (e.g. record sizes), samples are length-grouped: within mega-batches of 64 micro-batches
    they are sorted by length before being cut into micro-batches, and the micro-batches are shuffled. Each
    batch then holds similar lengths, so dynamic padding wastes little, while the order stays random.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, seed: int = 42, shuffle: bool = True,
                 batch_size: int = 1, lengths=None):
        self.n, self.rank, self.world_size, self.seed, self.shuffle = n, rank, world_size, seed, shuffle
        self.batch_size, self.lengths = batch_size, lengths
        self.epoch, self.consumed = 0, 0

    def set_epoch(self, epoch: int, consumed: int = 0):
        self.epoch, self.consumed = epoch, consumed

    def global_order(self) -> list:
        # An epoch's order is asked for several times (batch count, DataLoader length, iteration); it depends only
        # on the epoch, so it is built once per epoch (shuffling and length-sorting millions of ids is not free).
        if getattr(self, "_cached", (None,))[0] != self.epoch:
            self._cached = (self.epoch, self._build_order())
        return self._cached[1]

    def _build_order(self) -> list:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
        b = self.batch_size
        if self.lengths is not None and b > 1:
            mega = b * 64
            by_len = []
            for s in range(0, len(order), mega):
                by_len += sorted(order[s:s + mega], key=lambda i: -int(self.lengths[i]))
            chunks = [by_len[i:i + b] for i in range(0, len(by_len), b)]
            full, rest = (chunks, []) if len(chunks[-1]) == b else (chunks[:-1], chunks[-1:])
            perm = torch.randperm(len(full), generator=g).tolist()
            order = [i for c in [full[j] for j in perm] + rest for i in c]
        return order

    def remaining(self, consumed: int) -> list:
        order = self.global_order()
        rest = order[consumed:]
        if self.world_size > 1:
            # Every rank must get the same number of full micro-batches (DDP steps in lockstep): top up what is
            # left (also after a resume on another world size) with samples from the start of the epoch.
            pad = (-len(rest)) % (self.batch_size * self.world_size)
            rest = rest + (order * (1 + pad // max(1, len(order))))[:pad]
        return rest

    def __iter__(self):
        order = self.remaining(self.consumed)
        b, w = self.batch_size, self.world_size
        mine = []
        for c, i in enumerate(range(0, len(order), b)):
            if c % w == self.rank:
                mine += order[i:i + b]
        return iter(mine)

    def num_micro_batches(self, consumed: int = 0) -> int:
        return math.ceil(len(self.remaining(consumed)) / (self.batch_size * self.world_size))

    def __len__(self):
        return len(list(iter(self)))


# ================================================================================================================
# Logging
# ================================================================================================================
class MetricsLogger:
    """Rank-0 console lines, a tqdm bar (on a terminal), JSONL metrics in out/logs/, optional wandb/swanlab."""

    def __init__(self, args, stage_name: str, dist_state: DistState, run_id: Optional[str] = None):
        self.enabled = dist_state.is_main
        self.run, self.run_id, self.bar = None, run_id, None
        self.path = Path(args.save_dir) / "logs" / f"{stage_name}.jsonl"
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not args.from_resume and self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log; a resumed one appends
        if args.use_wandb:
            tracker = __import__(args.logger)
            kwargs = dict(project=args.wandb_project, name=stage_name, config=vars(args))
            if run_id:
                kwargs.update(id=run_id, resume="allow")
            self.run = tracker.init(**kwargs)
            self.run_id = getattr(self.run, "id", None)

    def info(self, msg: str):
        if self.enabled:
            if self.bar is not None:
                self.bar.write(msg)
            else:
                print(msg, flush=True)

    def start_bar(self, total: int, initial: int):
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def bar_update(self, **postfix):
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def log(self, metrics: dict):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.run is not None:
            self.run.log(metrics)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.run is not None:
            self.run.finish()


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


# ================================================================================================================
# The supervised training loop
# ================================================================================================================
@dataclass
class Batch:
    """What a stage's loss function returns for one micro-batch."""
    loss: torch.Tensor                 # scalar to minimise
    n_tokens: torch.Tensor             # real (non-padding) tokens processed, for tokens/s
    metrics: Optional[dict] = None     # extra scalars to log (tensors; averaged over the log interval)


class TrainLoop:
    """Optimiser, schedule, accumulation, clipping, DDP, logging, checkpointing and exact resume for one stage.

    A stage script builds the model and a dataset, then calls `TrainLoop(...).run(dataset, collate, loss_fn)`
    where `loss_fn(model, batch) -> Batch` is its whole algorithm. RL stages, whose data comes from rollouts,
    use the pieces (`set_lr`, `backward`, `optimizer_step`, `save`, `logger`) from `rl_utils.run_rl`.
    """

    def __init__(self, args, stage: str, model, dist_state: DistState, extra_state: Optional[dict] = None,
                 params=None):
        self.args, self.stage, self.ds = args, stage, dist_state
        self.device = dist_state.device
        self.config = unwrap(model).config
        self.name = weight_name(args.save_weight, self.config)
        self.dtype = resolve_dtype(args.dtype, self.device)
        self.autocast = autocast_context(self.device, self.dtype)
        self.scaler = torch.amp.GradScaler(torch.device(self.device).type,
                                           enabled=self.dtype == torch.float16)
        self.extra_state = extra_state or {}  # modules saved/resumed alongside (e.g. a PPO critic)
        params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        self.params = params
        fused = torch.device(self.device).type == "cuda"
        self.optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay,
                                           fused=fused)
        self.step, self.epoch, self.consumed = 0, 0, 0
        self.rescale_step = False  # set when a resume changes the world size
        self.resume_file = resume_path(args.checkpoint_dir, args.save_weight, self.config)
        run_id = None
        self.model = model
        if args.from_resume:
            run_id = self._load_resume()
        self.logger = MetricsLogger(args, self.name, dist_state, run_id)
        if torch.device(self.device).type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if args.use_compile:
            # Compiled lazily: the first step of each new input shape is slow (seconds to minutes) while inductor
            # builds kernels; packed pretraining has one shape, padded stages few (lengths padded to x64).
            self.log_main("torch.compile: the first steps compile the model and are slow")
            self.model = torch.compile(self.model)
        if dist_state.ddp:
            kind = torch.device(self.device).type
            ids = [dist_state.local_rank] if kind in ("cuda", "npu") else None
            self.model = DistributedDataParallel(self.model, device_ids=ids)

    # ---------------------------------------------------------------- resume
    def _load_resume(self):
        if not self.resume_file.is_file():
            self.log_main(f"--from_resume 1: no checkpoint at {self.resume_file}, starting fresh")
            return None
        ck = load_resume(self.resume_file)
        unwrap(self.model).load_state_dict(ck["model"], strict=True)
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        for name, module in self.extra_state.items():
            module.load_state_dict(ck["extra"][name], strict=True)
        self.step, self.epoch, self.consumed = ck["step"], ck["epoch"], ck["consumed"]
        set_rng_state(ck["rng"])
        self.rescale_step = ck["world_size"] != self.ds.world_size
        if self.rescale_step:
            self.log_main(f"resuming a {ck['world_size']}-process run on {self.ds.world_size} processes: "
                          f"continuing after sample {self.consumed} of epoch {self.epoch + 1}")
        self.log_main(f"resumed from {self.resume_file}: epoch {self.epoch + 1}, step {self.step}")
        return ck.get("run_id")

    def log_main(self, msg):
        if self.ds.is_main:
            print(msg, flush=True)

    # ---------------------------------------------------------------- saving
    def save(self):
        """Half-precision weights to out/ and the full resume state to checkpoints/, both atomically."""
        if self.ds.is_main:
            model = unwrap(self.model)
            atomic_save(self.weights_to_save(model), weight_path(self.args.save_dir, self.args.save_weight,
                                                                 self.config))
            for name, module in self.extra_state.items():
                atomic_save(half_state_dict(module), weight_path(self.args.save_dir, name, self.config))
            atomic_save({
                "model": {k: v.cpu() for k, v in model.state_dict().items()},  # full precision for exact resume
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "extra": {n: m.state_dict() for n, m in self.extra_state.items()},
                "step": self.step, "epoch": self.epoch, "consumed": self.consumed,
                "world_size": self.ds.world_size, "rng": rng_state(),
                "run_id": self.logger.run_id, "args": {k: v for k, v in vars(self.args).items()
                                                       if isinstance(v, (int, float, str, bool, type(None)))},
            }, self.resume_file)
        if self.ds.ddp:
            dist.barrier()

    def weights_to_save(self, model) -> dict:
        """What goes to out/{stage}_{hidden}.pth; LoRA overrides this to save only the adapter."""
        return half_state_dict(model)

    # ---------------------------------------------------------------- one optimizer step
    def set_lr(self, total_steps: int) -> float:
        lr = get_lr(self.step, total_steps, self.args.learning_rate, self.args.min_lr_ratio, self.args.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def backward(self, loss):
        self.scaler.scale(loss).backward()

    def optimizer_step(self) -> torch.Tensor:
        """Unscale, clip, step, zero grads; returns the pre-clip grad norm (a tensor: no host sync)."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.args.grad_clip if self.args.grad_clip > 0
                                                   else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return grad_norm

    def reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.ds.ddp:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values /= self.ds.world_size
        return values

    # ---------------------------------------------------------------- the supervised loop
    def run(self, dataset, collate_fn, loss_fn: Callable, shuffle: bool = True, lengths=None):
        """Train on `dataset` with `loss_fn(model, batch) -> Batch`. `lengths` (one number per sample, e.g.
        `dataset.data.byte_lengths()`) turns on length-grouped batching."""
        args, ds = self.args, self.ds
        sampler = ResumableSampler(len(dataset), ds.rank, ds.world_size, seed=args.seed, shuffle=shuffle,
                                   batch_size=args.batch_size, lengths=lengths)
        samples_per_micro = args.batch_size * ds.world_size
        micro_per_epoch = sampler.num_micro_batches()
        steps_per_epoch = math.ceil(micro_per_epoch / args.accumulation_steps)
        total_steps = steps_per_epoch * args.epochs
        if self.rescale_step:
            # Steps are counted per process group: with a new world size the same number of consumed samples is
            # a different number of optimizer steps, and the LR schedule must continue from that position.
            self.step = self.epoch * steps_per_epoch + math.ceil(
                self.consumed / (samples_per_micro * args.accumulation_steps))
            self.log_main(f"step rescaled to {self.step} for world size {ds.world_size}")
        last_step = min(total_steps, args.max_steps) if args.max_steps else total_steps
        self.logger.info(f"[{self.name}] {len(dataset)} samples, {ds.world_size} process(es), "
                         f"{steps_per_epoch} steps/epoch x {args.epochs} epochs = {total_steps} optimizer steps "
                         f"(micro-batch {args.batch_size}, accumulation {args.accumulation_steps}, "
                         f"device {self.device}, dtype {str(self.dtype).replace('torch.', '')})")
        self.model.train()
        self.logger.start_bar(last_step, self.step)
        pin = torch.device(self.device).type == "cuda"
        t0, tokens_since, steps_since = time.time(), 0, 0
        acc, acc_n = None, 0  # running sums since the last log line, kept on device (no per-step host sync)
        t_start, start_step = time.time(), self.step
        done = self.step >= last_step
        while self.epoch < args.epochs and not done:
            sampler.set_epoch(self.epoch, self.consumed)
            loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, collate_fn=collate_fn,
                                num_workers=args.num_workers, pin_memory=pin, drop_last=False,
                                persistent_workers=False)
            micro_left = len(loader)
            group, group_size = 0, min(args.accumulation_steps, micro_left)
            for batch in loader:
                batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                         for k, v in batch.items()}
                if group == 0:
                    lr = self.set_lr(total_steps)
                group += 1
                sync = group == group_size
                # Under DDP, gradients are all-reduced only on the micro-batch that ends an accumulation group.
                ctx = self.model.no_sync() if ds.ddp and not sync else nullcontext()
                with ctx:
                    with self.autocast:
                        out: Batch = loss_fn(self.model, batch)
                    self.backward(out.loss / group_size)
                stats = {"loss": out.loss.detach().float()}
                for k, v in (out.metrics or {}).items():
                    stats[k] = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
                stats = {k: v.to(self.device) for k, v in stats.items()}
                acc = stats if acc is None else {k: acc[k] + stats[k] for k in acc}
                acc_n += 1
                tokens_since = tokens_since + out.n_tokens.detach()
                self.consumed += samples_per_micro
                micro_left -= 1
                if not sync:
                    continue
                grad_norm = self.optimizer_step()
                group, group_size = 0, min(args.accumulation_steps, micro_left)
                steps_since += 1
                if micro_left == 0:  # epoch finished: the next one starts from its beginning
                    self.epoch, self.consumed = self.epoch + 1, 0
                done = self.step >= last_step
                if self.step % args.log_interval == 0 or done or self.step == 1:
                    self._log(acc, acc_n, tokens_since, steps_since, t0, lr, grad_norm, t_start, start_step,
                              last_step)
                    acc, acc_n, tokens_since, steps_since, t0 = None, 0, 0, 0, time.time()
                else:
                    self.logger.bar_update()
                if self.step % args.save_interval == 0 and not done:
                    self.save()
                if done:
                    break
        self.save()
        self.logger.info(f"[{self.name}] done: {self.step} steps in {format_eta(time.time() - t_start)}; "
                         f"weights -> {weight_path(args.save_dir, args.save_weight, self.config)}")
        self.logger.close()

    def _log(self, acc, acc_n, tokens, steps, t0, lr, grad_norm, t_start, start_step, last_step):
        keys = list(acc)
        vals = torch.stack([acc[k] for k in keys] + [torch.as_tensor(tokens, device=self.device).float(),
                                                      grad_norm.detach().float().to(self.device)])
        vals = self.reduce_mean(vals).tolist()  # the one host sync per log interval
        metrics = {k: v / acc_n for k, v in zip(keys, vals[:len(keys)])}
        dt = max(time.time() - t0, 1e-9)
        tok_s = vals[len(keys)] * self.ds.world_size / dt
        elapsed = time.time() - t_start
        eta = elapsed / max(1, self.step - start_step) * (last_step - self.step)
        row = {"step": self.step, "epoch": self.epoch + (1 if self.consumed else 0), "lr": lr,
               "grad_norm": vals[-1], "tokens_per_s": tok_s, **metrics, "time": time.time()}
        self.logger.log(row)
        extra = " ".join(f"{k}: {v:.4f}" for k, v in metrics.items() if k != "loss")
        self.logger.info(f"[{self.name}] step {self.step}/{last_step} loss: {metrics['loss']:.4f} {extra} "
                         f"lr: {lr:.3e} grad_norm: {vals[-1]:.3f} tok/s: {tok_s:,.0f} ETA: {format_eta(eta)}")
        self.logger.bar_update(loss=f"{metrics['loss']:.3f}", tok_s=f"{tok_s:,.0f}")


def lm_loss(model, batch, doc_attention_impl: str = "auto") -> Batch:
    """Next-token cross-entropy over the labelled positions (+ the MoE load-balancing loss).

    No padding mask is passed: padding sits at the end of each row and attention is causal, so real
    tokens never see it, and SDPA keeps its fast causal kernel. Packed blocks with document-aware attention
    bring their own position ids and block-diagonal mask.
    """
    # packed, document-aware: a flex_attention BlockMask on CUDA, a dense boolean SDPA mask elsewhere
    mask = doc_attention_mask(batch["doc_ids"], doc_attention_impl) if "doc_ids" in batch else None
    out = model(input_ids=batch["input_ids"], labels=batch["labels"], attention_mask=mask,
                position_ids=batch.get("position_ids"))
    loss = out.loss + out.aux_loss
    return Batch(loss=loss, n_tokens=batch["attention_mask"].sum(),
                 metrics={"aux_loss": out.aux_loss} if unwrap(model).config.use_moe else None)
