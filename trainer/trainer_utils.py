"""The small pieces every stage script's training loop calls. The loop itself is written out in each
trainer/train_*.py; here is only what would otherwise be repeated. Each helper does one thing and takes what it
needs as parameters; `Batches.from_flags` and `TrainRun.from_flags` are the two places that read the common
flags from `args`:

  flags        add_common_args(parser, *, stage, data_path, epochs, batch_size, learning_rate, max_seq_len,
                               from_weight, accumulation_steps, save_interval, log_interval)
  processes    init_distributed(device_arg, seed=None) -> DistState(rank, local_rank, world_size, device, is_main,
                   ddp); seeds every rank alike (elastic_attempt_store: per-restart rendezvous keys under
                   `torchrun --max_restarts`);  cleanup_distributed();  print0(*args): print on rank 0 only
  precision    mixed_precision(dtype_name, device) -> (dtype, autocast context, GradScaler)
               grad_scaler(dtype, device) -> a GradScaler of its own (a second optimizer: PPO's critic)
  model        init_model(config, weight, *, save_dir, device, flag="--from_weight") -> model: built, `weight`
                   loaded strictly (the student, and the distillation teacher through the same path)
               frozen_copy(model) / freeze(model) -> eval mode, no gradients: references and the teacher
               wrap_model(model, dist_state, compile=False) -> torch.compile and/or DDP wrapper
               lm_loss(model, batch, doc_attention_impl) -> (loss, aux_loss): pretraining's forward + loss
  data         dynamic_padding(dataset, pad_id, max_seq_len, pad_to_max, group_by_length, pad_multiple)
                   -> (collate_fn, lengths)
               padding_multiple(device, compiled) -> 64 on GPUs / NPUs and compiled, else 1
               Batches(dataset, collate_fn, dist_state, *, batch_size, epochs, seed, accumulation_steps=1,
                       lengths=None, shuffle=True, num_workers=0), or Batches.from_flags(args, dataset, dist_state,
                       pad_id= | collate_fn=): iterate -> one list of device micro-batches per optimizer step;
                   .total_steps, .steps_per_epoch, .current_epoch, .describe(),
                   .state_dict() / .load_state_dict() (epoch, consumed), .steps_done()
               ResumableSampler: the seeded, DDP-sharded, length-grouped order under Batches
  optimizing   make_optimizer(params, lr, weight_decay, device) -> AdamW
               get_lr(step, total_steps, lr, min_lr_ratio, warmup_steps) -> float;  set_lr(optimizer, lr)
               ddp_sync(model, sync) -> context for a forward: DDP all-reduces gradients only when `sync`
               optimizer_step(optimizer, scaler, grad_clip) -> grad_norm tensor (unscale, clip, step, zero_grad)
  logging      TrainLogger(name, save_dir, dist_state, *, log_interval, last_step, start_step=0, append=False,
                           wandb_project=None, tracker="wandb", config=None, run_id=None)
                   .add(tokens=None, **values) per micro-batch, .log(step, metrics, epoch) per step, .info(msg),
                   .close(), .run_id
  a run        TrainRun.from_flags(args, config, dist_state, batches, *, steps_per_batch=1): the bookkeeping
               around a loop (file names, step range, LR schedule, save schedule, the logger):
                   .resume(model, optimizer, scaler, batches, *, name=None, extra=None) -> step
                   .open_logger(step, batches, dtype, info="") -> TrainLogger
                   .batches_left(step), .last_step, .total_steps, .lr(step, base_lr=None)
                   .maybe_save(step, model, optimizer, scaler, batches, *, extra=None, weights=half_state_dict)
                   .save_due(step) + .save(step, ..., name=None) (several models), .finish(step), .weight_file

trainer/train_full_sft.py is the shortest example of a stage script built from them. Weight and resume files
(names, save_checkpoint / load_checkpoint, strict loading, the tokenizer) are model/checkpoint.py's; device,
dtype, autocast, seed and `unwrap` model/runtime.py's; the model-size flags model/config_flags.py's.
"""
import argparse
import copy
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dataset.lm_dataset import PadCollator, doc_attention_mask  # noqa: E402
from model.checkpoint import (DEFAULT_CHECKPOINTS, DEFAULT_OUT, DEFAULT_TOKENIZER, half_state_dict,  # noqa: E402
                              load_checkpoint, load_weights, resume_path, save_checkpoint, weight_name, weight_path)
from model.config_flags import add_model_size_args  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.runtime import (autocast_context, default_device, is_accelerator, resolve_dtype, setup_seed,  # noqa: E402
                           unwrap)


# ================================================================================================================
# Arguments
# ================================================================================================================
def add_common_args(parser: argparse.ArgumentParser, *, stage: str, data_path: str, epochs=1, batch_size=32,
                    learning_rate=5e-4, max_seq_len=512, from_weight="none", accumulation_steps=1,
                    save_interval=1000, log_interval=100):
    """The flags every stage shares, with the original MiniMind's names. Paths default to the repo root.
    `max_seq_len=None` leaves --max_seq_len out (the RL stages define it as an alias of --max_prompt_len)."""
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
    if max_seq_len is not None:
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
# Processes, devices, precision
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


def init_distributed(device_arg: Optional[str] = None, seed: Optional[int] = None) -> DistState:
    """Start the process group when launched by torchrun; pick this process's device; seed every random
    generator with `seed` (model/runtime.setup_seed), the same on every rank, so that all ranks build the same
    initial weights (and adapters, critics, ...).

    RANK decides rank-0 work (logging, saving), LOCAL_RANK the device on this node, so multi-node runs
    (`torchrun --nnodes N --node_rank R --master_addr HOST ...`) work unchanged.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = device_arg or default_device()
    if device.startswith("npu"):
        import torch_npu  # noqa: F401  registers the "npu" device type with torch
    if seed is not None:
        setup_seed(seed)
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
        dist.init_process_group(backend=backend, store=elastic_attempt_store(rank, world_size),
                                rank=rank, world_size=world_size)
    return DistState(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def elastic_attempt_store(rank: int, world_size: int):
    """The env:// rendezvous store, with its keys kept apart per torchrun restart attempt.

    When torchrun (`--max_restarts N`) restarts a failed group, the new workers reconnect to the SAME agent
    TCPStore as the group before them (torch 2.13, static and c10d rendezvous alike), and the process group's
    keys (under "default_pg/", where gloo publishes each rank's listening address) have the same names again. A
    new worker can then read the address of a dead worker of the last attempt before its new peer overwrites it,
    and gloo's connectFullMesh fails with "Connection refused" (or hangs until the timeout). Prefixing the store
    with TORCHELASTIC_RESTART_COUNT (set by torchrun) gives each attempt fresh keys. Elsewhere: plain env://.
    """
    store, _, _ = next(dist.rendezvous("env://", rank, world_size))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    return dist.PrefixStore(f"minimind/attempt_{attempt}", store) if attempt is not None else store


def cleanup_distributed():
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def print0(*args, **kwargs):
    """print() on rank 0 only (RANK is set by torchrun; a plain `python` run is rank 0)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


def mixed_precision(dtype_name: str, device: str):
    """--dtype -> (dtype, autocast context for the forward pass, GradScaler).

    Weights stay fp32; autocast runs the matmuls in bf16/fp16. Only fp16 needs the GradScaler (its small
    gradients underflow); for other dtypes it is a disabled pass-through. On CUDA, fp32 matmuls may use TF32.
    """
    dtype = resolve_dtype(dtype_name, device)
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dtype, autocast_context(device, dtype), grad_scaler(dtype, device)


def grad_scaler(dtype: torch.dtype, device: str) -> torch.amp.GradScaler:
    """A GradScaler for one optimizer: active under fp16 only. A second optimizer (PPO's critic) takes its own, so
    its loss scale follows its own gradients."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=dtype == torch.float16)


# ================================================================================================================
# Model
# ================================================================================================================
def init_model(config: MiniMindConfig, weight: str = "none", *, save_dir=DEFAULT_OUT, device="cpu",
               flag: str = "--from_weight", size_flags: str = "--preset/--hidden_size/--use_moe", log=print0):
    """A model of `config` on `device`, with `weight` loaded strictly (`load_weights`): a stage name
    ({save_dir}/{weight}_{hidden}[_moe].pth), a .pth path, or "none" (random initialisation). `flag` and
    `size_flags` name the command-line flags in the messages (the distillation teacher has its own)."""
    model = MiniMindForCausalLM(config)
    if weight and weight != "none":
        path = Path(weight) if weight.endswith(".pth") else weight_path(save_dir, weight, config)
        if not path.is_file():
            raise FileNotFoundError(
                f"{flag} {weight}: {path} not found. Train that stage first, point --save_dir at the folder "
                f"holding it, check {size_flags}, or pass a .pth path.")
        load_weights(model, path, f"{flag} {weight}")
        log(f"loaded weights from {path}")
    n = sum(p.numel() for p in model.parameters())
    log(f"{flag} {weight}: {n / 1e6:.3f}M parameters (hidden={config.hidden_size}, layers={config.num_hidden_layers}, "
        f"moe={int(config.use_moe)})")
    return model.to(device)


def freeze(model):
    """Eval mode and no gradients: a model that only runs forward (a reference policy, a teacher)."""
    return model.eval().requires_grad_(False)


def frozen_copy(model):
    """A frozen copy of the plain model as it is now: the reference policy of DPO and the RL stages, taken from
    the starting weights (before a resume loads the trained ones)."""
    return freeze(copy.deepcopy(unwrap(model)))


def wrap_model(model, dist_state: DistState, compile: bool = False):
    """torch.compile (optional), then DistributedDataParallel when launched by torchrun.

    Load weights and resume state into the plain model first (or into `unwrap(model)`): the wrappers prefix the
    state-dict keys. Compilation is lazy: the first step of each new input shape is slow (seconds to minutes)
    while inductor builds kernels; packed pretraining has one shape, padded stages few (lengths padded to x64).
    """
    if compile:
        print0("torch.compile: the first steps compile the model and are slow")
        model = torch.compile(model)
    if dist_state.ddp:
        model = DistributedDataParallel(model, device_ids=[dist_state.local_rank] if is_accelerator(dist_state.device)
                                        else None)
    return model


class LMLoss(NamedTuple):
    loss: torch.Tensor      # next-token cross-entropy + the MoE balance loss (what is minimised)
    aux_loss: torch.Tensor  # the MoE balance loss alone (0 for a dense model)


def lm_loss(model, batch: dict, doc_attention_impl: str = "auto") -> LMLoss:
    """Next-token cross-entropy over the labelled positions of a pretraining batch, plus the MoE balance loss.

    Padded rows need no mask: padding sits at the end of each row and attention is causal, so real tokens never
    see it, and SDPA keeps its fast causal kernel. Packed, document-aware blocks bring their own position ids and
    `doc_ids`, turned into a block-diagonal causal mask (a flex_attention BlockMask on CUDA, a dense boolean
    SDPA mask elsewhere: `doc_attention_impl`). scripts/benchmark.py times it; tests check it.
    """
    mask = doc_attention_mask(batch["doc_ids"], doc_attention_impl) if "doc_ids" in batch else None
    out = model(input_ids=batch["input_ids"], labels=batch["labels"], attention_mask=mask,
                position_ids=batch.get("position_ids"))
    return LMLoss(out.loss + out.aux_loss, out.aux_loss)


# ================================================================================================================
# Data: a seeded, DDP-sharded, resumable order, cut into accumulation groups
# ================================================================================================================
def padding_multiple(device: str, compiled: bool) -> int:
    """The length that padded batches are rounded up to: 64 on GPUs / NPUs and under torch.compile, else 1.

    On a GPU, a batch of an odd length (say 437) gets slow matmul and attention kernels, and a new length every
    step keeps the allocator busy: measured on an H100 (26M SFT, batch 32, bf16), dynamic padding to the longest
    row ran at 0.64x the speed of padding everything to 512, and rounding up to a multiple of 64 at 1.9x
    (scripts/benchmark.py --pad_multiple). torch.compile also sees at most max_seq_len / 64 shapes then. A CPU
    gains nothing from it and pays for the padding."""
    return 64 if compiled or is_accelerator(device) else 1


def dynamic_padding(dataset, pad_id: int, max_seq_len: int, pad_to_max: bool = False, group_by_length: bool = True,
                    pad_multiple: int = 1):
    """(collate_fn, lengths) for a dataset of one record per row, padded per batch.

    PadCollator pads each batch to its longest row, rounded up to `pad_multiple` (`padding_multiple`), or to
    --max_seq_len with `pad_to_max`, like the original MiniMind. `lengths` (record sizes, or None) makes
    `Batches` group similar lengths into a batch, so little compute is spent on padding.
    """
    collate = PadCollator(pad_id, pad_to=max_seq_len if pad_to_max else None, pad_multiple=pad_multiple)
    lengths = dataset.data.byte_lengths() if group_by_length and not pad_to_max else None
    return collate, lengths


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


class Batches:
    """The training data as optimizer steps: each item is one accumulation group, a list of up to
    `accumulation_steps` micro-batches (dicts of tensors already on the device), for the remaining epochs.

    Sharded across DDP ranks by `ResumableSampler` (one micro-batch step of all ranks consumes
    batch_size * world_size consecutive samples of a seeded global order) and resumable: `state_dict()` is the
    position (epoch, samples of it consumed). The position advances when a group is handed out, so a checkpoint
    saved after that group's optimizer step continues with the next group, also on another number of ranks.
    A group never spans two epochs: the last one of an epoch may be shorter (divide its losses by its length).
    """

    def __init__(self, dataset, collate_fn, dist_state: DistState, *, batch_size: int, epochs: int, seed: int,
                 accumulation_steps: int = 1, lengths=None, shuffle: bool = True, num_workers: int = 0):
        self.dataset, self.collate_fn, self.device = dataset, collate_fn, dist_state.device
        self.batch_size, self.epochs, self.accumulation_steps = batch_size, epochs, accumulation_steps
        self.num_workers, self.world_size = num_workers, dist_state.world_size
        self.sampler = ResumableSampler(len(dataset), dist_state.rank, dist_state.world_size, seed=seed,
                                        shuffle=shuffle, batch_size=batch_size, lengths=lengths)
        self.samples_per_micro = batch_size * dist_state.world_size  # consumed by one micro-batch of all ranks
        self.steps_per_epoch = math.ceil(self.sampler.num_micro_batches() / accumulation_steps)
        self.total_steps = self.steps_per_epoch * epochs
        self.epoch, self.consumed = 0, 0

    @classmethod
    def from_flags(cls, args: argparse.Namespace, dataset, dist_state: DistState, *, pad_id: Optional[int] = None,
                   collate_fn: Optional[Callable] = None) -> "Batches":
        """`dataset` as Batches configured by the data flags `add_common_args` declares. With `pad_id`: each
        batch padded to its longest row (rounded up to `padding_multiple`) and similar lengths batched together
        (`dynamic_padding`); with `collate_fn`: batches made by it, in plain shuffled order."""
        lengths = None
        if collate_fn is None:
            collate_fn, lengths = dynamic_padding(dataset, pad_id, args.max_seq_len, args.pad_to_max,
                                                  bool(args.group_by_length),
                                                  padding_multiple(dist_state.device, bool(args.use_compile)))
        return cls(dataset, collate_fn, dist_state, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                   accumulation_steps=args.accumulation_steps, lengths=lengths, num_workers=args.num_workers)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict):
        self.epoch, self.consumed = state["epoch"], state["consumed"]

    def steps_done(self) -> int:
        """The optimizer steps the current position amounts to with this world size and accumulation (after a
        resume on another number of ranks, the LR schedule continues from here)."""
        return self.epoch * self.steps_per_epoch + math.ceil(
            self.consumed / (self.samples_per_micro * self.accumulation_steps))

    @property
    def current_epoch(self) -> int:
        """1-based number of the epoch the latest group came from (what the logs call `epoch`)."""
        return self.epoch + (1 if self.consumed else 0)

    def describe(self, steps_per_group: int = 1) -> str:
        """One line for the log; `steps_per_group`: optimizer steps per group (RL: several per rollout batch)."""
        per_epoch = (f"{self.steps_per_epoch} steps/epoch" if steps_per_group == 1 else
                     f"{self.steps_per_epoch} batches/epoch x {steps_per_group} steps")
        return (f"{len(self.dataset)} samples, {self.world_size} process(es), {per_epoch} x {self.epochs} epochs = "
                f"{self.total_steps * steps_per_group} optimizer steps (micro-batch {self.batch_size}, "
                f"accumulation {self.accumulation_steps})")

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def __iter__(self):
        pin = torch.device(self.device).type == "cuda"
        while self.epoch < self.epochs:
            self.sampler.set_epoch(self.epoch, self.consumed)
            if hasattr(self.dataset, "set_epoch"):  # per-sample seeded draws (augmentations): this epoch's
                self.dataset.set_epoch(self.epoch)  # before the DataLoader copies the dataset into its workers
            loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                                collate_fn=self.collate_fn, num_workers=self.num_workers, pin_memory=pin)
            micro_left, micro_batches = len(loader), iter(loader)
            while micro_left:
                n = min(self.accumulation_steps, micro_left)
                group = [self._to_device(next(micro_batches)) for _ in range(n)]
                micro_left -= n
                self.consumed += n * self.samples_per_micro
                if micro_left == 0:  # the epoch's last group: a save after its step must point at the next epoch
                    self.epoch, self.consumed = self.epoch + 1, 0
                yield group


# ================================================================================================================
# Optimization
# ================================================================================================================
def make_optimizer(params, lr: float, weight_decay: float, device: str) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad (LoRA: only the adapters); fused kernels on CUDA."""
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=torch.device(device).type == "cuda")


def get_lr(step: int, total_steps: int, lr: float, min_lr_ratio: float = 0.1, warmup_steps: int = 0) -> float:
    """Linear warmup, then cosine decay from lr down to a floor of lr * min_lr_ratio at the last step."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    floor = lr * min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> float:
    """Set the learning rate of every parameter group (the schedule is `get_lr`); returns it."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def ddp_sync(model, sync: bool):
    """Context for one micro-batch's FORWARD: under DDP, its backward all-reduces the gradients across ranks only
    when `sync` (the last micro-batch of an accumulation group); the others just add to the local .grad.
    DDP decides during the forward (it arms the all-reduce hooks in `_post_forward` only when syncing), so the
    backward may run after the context, outside autocast as PyTorch advises. Without DDP it does nothing."""
    if isinstance(model, DistributedDataParallel) and not sync:
        return model.no_sync()
    return nullcontext()


def optimizer_step(optimizer, scaler, grad_clip: float) -> torch.Tensor:
    """Unscale (fp16), clip the gradient norm to `grad_clip` (<= 0: no clipping), step, zero the gradients.

    Returns the pre-clip gradient norm as a tensor: reading it (.item()) would wait for the device, so the
    logger does that once per log line. A GradScaler skips the step when an fp16 gradient overflowed.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


# ================================================================================================================
# Logging
# ================================================================================================================
class TrainLogger:
    """Rank-0 console lines, a tqdm bar (on a terminal), JSONL rows in {save_dir}/logs/{name}.jsonl (what
    tests and scripts/report.py read) and optionally wandb / swanlab.

      add(**values)             per micro-batch: running sums on the device, no host sync; `tokens` is summed
                                (for tokens/s), every other value averaged; None values are skipped
      log(step, metrics, epoch) per optimizer step, on EVERY rank (it all-reduces): on the first step, every
                                `log_interval` steps and the last one, it averages what was added since the last
                                line over micro-batches and ranks (one host sync), adds `metrics` (lr, grad_norm,
                                ...), writes a JSONL row and a console line with tok/s and ETA; else it advances
                                the bar. Steps may jump (RL: several per rollout): a line is due whenever the
                                steps cross a multiple of `log_interval`.
      info(msg), close()
    """

    def __init__(self, name: str, save_dir, dist_state: DistState, *, log_interval: int, last_step: int,
                 start_step: int = 0, append: bool = False, wandb_project: Optional[str] = None,
                 tracker: str = "wandb", config: Optional[dict] = None, run_id: Optional[str] = None):
        self.name, self.ds, self.every = name, dist_state, max(1, log_interval)
        self.last_step, self.start_step, self.prev_step = last_step, start_step, start_step
        self.sums, self.count, self.tokens = {}, 0, 0
        self.t_start = self.t_line = time.time()
        self.run, self.run_id, self.bar = None, run_id, None
        self.path = Path(save_dir) / "logs" / f"{name}.jsonl"
        if not dist_state.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not append and self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log; a resumed one appends
        if wandb_project:
            kwargs = dict(project=wandb_project, name=name, config=config or {})
            if run_id:
                kwargs.update(id=run_id, resume="allow")
            self.run = __import__(tracker).init(**kwargs)
            self.run_id = getattr(self.run, "id", None)
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=last_step, initial=start_step, unit="step", dynamic_ncols=True)

    def info(self, msg: str):
        if not self.ds.is_main:
            return
        if self.bar is not None:
            self.bar.write(f"[{self.name}] {msg}")
        else:
            print(f"[{self.name}] {msg}", flush=True)

    def add(self, tokens=None, **values):
        for k, v in values.items():
            if v is not None:
                v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v), device=self.ds.device)
                self.sums[k] = self.sums[k] + v if k in self.sums else v
        if tokens is not None:
            self.tokens = self.tokens + (tokens.detach() if torch.is_tensor(tokens) else tokens)
        self.count += 1

    def log(self, step: int, metrics: dict, epoch: int):
        prev, self.prev_step = self.prev_step, step
        if not (prev == 0 or step >= self.last_step or step // self.every > prev // self.every):
            if self.bar is not None:
                self.bar.update(step - prev)
            return
        # One tensor, one all-reduce, one host sync for everything on the line.
        keys = list(self.sums) + [k for k, v in metrics.items() if torch.is_tensor(v)]
        vals = [self.sums[k] / max(1, self.count) for k in self.sums]
        vals += [metrics[k].detach().float() for k in keys[len(self.sums):]]
        vals = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.ds.device).reshape(())
                            for v in vals + [self.tokens]])
        if self.ds.ddp:
            dist.all_reduce(vals, op=dist.ReduceOp.SUM)
            vals /= self.ds.world_size
            # Keep the reduced tensor referenced. gloo's worker thread may free its collective after we moved on,
            # and freeing a tensor Python already let go of takes the GIL: at the end of a run, right before the
            # process group's destructor joins that thread while holding the GIL, that deadlocks (torch #56297).
            self._reduced = vals
        vals = vals.tolist()
        now = time.time()
        tok_s = vals[-1] * self.ds.world_size / max(now - self.t_line, 1e-9)
        means = dict(zip(keys, vals))
        row = {"step": step, "epoch": epoch, **{k: means.get(k, v) for k, v in metrics.items()},
               "tokens_per_s": tok_s, **{k: means[k] for k in self.sums}, "time": now}
        if self.ds.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if self.run is not None:
                self.run.log(row)
        shown = " ".join(f"{k}: {means[k]:.4f}" for k in self.sums)
        shown += "".join(f" {k}: {row[k]:.3e}" if k == "lr" else f" {k}: {row[k]:.3f}" if k == "grad_norm"
                         else f" {k}: {row[k]:.4f}" for k in metrics)
        eta = (now - self.t_start) / max(1, step - self.start_step) * (self.last_step - step)
        self.info(f"step {step}/{self.last_step} {shown} tok/s: {tok_s:,.0f} ETA: {format_eta(eta)}")
        if self.bar is not None:
            self.bar.update(step - prev)
            self.bar.set_postfix({"loss": f"{means.get('loss', float('nan')):.3f}", "tok_s": f"{tok_s:,.0f}"},
                                 refresh=False)
        self.sums, self.count, self.tokens, self.t_line = {}, 0, 0, now

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.run is not None:
            self.run.finish()


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


# ================================================================================================================
# A run: the bookkeeping around a stage's loop
# ================================================================================================================
@dataclass
class TrainRun:
    """The bookkeeping around a stage's loop (not the loop, and not its setup: both stay in the script). It knows
    the run's files, step range, learning-rate schedule and save schedule:

      resume(model, optimizer, scaler, batches)   with --from_resume 1: load the checkpoint into the plain model,
                                                  optimizer, scaler and data position -> the step to continue
                                                  from (else 0); the run then ends where the data ends from there
      open_logger(step, batches, dtype, info)     the TrainLogger, and its first line (data, device, dtype)
      batches_left(step)                          how many items of `batches` the loop takes: it stops at
                                                  `last_step` (the end of the data, or max_steps)
      lr(step, base_lr=None)                      this step's learning rate: `get_lr` over `total_steps`
      save_due(step)                              whether `step` is a save step (pure: RL steps jump by several)
      maybe_save(step, model, ...)                save when due; PPO's two models: `if run.save_due(step):` +
                                                  save() x 2
      finish(step)                                the "done" line, close the logger, leave the process group

    Files (`files(name)`): {save_dir}/{name}_{hidden}[_moe].pth (weights), {checkpoint_dir}/..._resume.pth (exact
    resume), {save_dir}/logs/{name}_{hidden}[_moe].jsonl (metrics). `TrainRun.from_flags` reads the flags
    `add_common_args` declares; the fields below say what each one does.
    """
    name: str                       # file prefix (--save_weight), e.g. "full_sft" or "lora/lora_identity"
    config: MiniMindConfig          # the model size is part of every file name
    dist_state: DistState
    total_steps: int                # the learning-rate schedule's length: all the data's optimizer steps
    save_dir: Path = DEFAULT_OUT
    checkpoint_dir: Path = DEFAULT_CHECKPOINTS
    # learning-rate schedule
    learning_rate: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    # step range, resume, saving
    steps_per_batch: int = 1        # optimizer steps per item of `batches` (RL: several per rollout batch)
    max_steps: int = 0              # 0: no limit
    save_interval: int = 1000       # 0: save only at the end
    from_resume: bool = False
    # logging
    log_interval: int = 100
    wandb_project: Optional[str] = None  # None: no tracker
    tracker: str = "wandb"
    flags: dict = field(default_factory=dict)  # all flags: stored in the checkpoint and in the tracker's config
    # set by the run
    last_step: int = field(default=0, init=False)   # where the loop stops (resume moves it)
    run_id: Optional[str] = field(default=None, init=False)  # the tracker's run, continued after a resume
    logger: Optional[TrainLogger] = field(default=None, init=False)
    saved: list = field(default_factory=list, init=False, repr=False)  # weight files written (the "done" line)

    def __post_init__(self):
        self.last_step = min(self.total_steps, self.max_steps or self.total_steps)

    @classmethod
    def from_flags(cls, args: argparse.Namespace, config: MiniMindConfig, dist_state: DistState, batches: Batches,
                   *, name: Optional[str] = None, steps_per_batch: int = 1) -> "TrainRun":
        """A run over `batches` configured by the flags `add_common_args` declares."""
        return cls(name or args.save_weight, config, dist_state, total_steps=batches.total_steps * steps_per_batch,
                   save_dir=Path(args.save_dir), checkpoint_dir=Path(args.checkpoint_dir),
                   learning_rate=args.learning_rate, min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup_steps,
                   steps_per_batch=steps_per_batch, max_steps=args.max_steps, save_interval=args.save_interval,
                   from_resume=bool(args.from_resume), log_interval=args.log_interval,
                   wandb_project=args.wandb_project if args.use_wandb else None, tracker=args.logger,
                   flags=vars(args))

    def files(self, name: Optional[str] = None):
        """(weight file, resume file) of `name` (default: the run's own)."""
        name = name or self.name
        return weight_path(self.save_dir, name, self.config), resume_path(self.checkpoint_dir, name, self.config)

    @property
    def weight_file(self) -> Path:
        return self.files()[0]

    def resume(self, model, optimizer, scaler, batches: Batches, *, name: Optional[str] = None,
               extra: Optional[dict] = None) -> int:
        """With `from_resume`: load the checkpoint of `name` (default: the run's) strictly into the plain model,
        optimizer, scaler, `extra` modules ({name: module}) and the data position, and return its step (no
        checkpoint yet: 0). Call it before `wrap_model` (the wrappers prefix the state-dict keys).

        The run then ends where the data ends from that position (or at max_steps): a run stopped by --max_steps
        inside a batch's steps (RL) resumes with the next batch, so it ends a few steps short of total_steps.
        """
        if not self.from_resume:
            return 0
        step, self.run_id = load_checkpoint(self.files(name)[1], model, optimizer, scaler, batches,
                                            self.dist_state.world_size, extra, steps_per_group=self.steps_per_batch,
                                            log=print0)
        end = step + (batches.total_steps - batches.steps_done()) * self.steps_per_batch
        self.last_step = min(end, self.max_steps or end)
        return step

    def open_logger(self, step: int, batches: Batches, dtype: torch.dtype, info: str = "") -> "TrainLogger":
        """The run's TrainLogger from `step` on (a resumed run appends to its log and continues its tracker run),
        with a first line saying what runs where (`info`: the stage's own words)."""
        self.logger = TrainLogger(weight_name(self.name, self.config), self.save_dir, self.dist_state,
                                  log_interval=self.log_interval, last_step=self.last_step, start_step=step,
                                  append=self.from_resume, wandb_project=self.wandb_project, tracker=self.tracker,
                                  config=self.flags, run_id=self.run_id)
        self.logger.info(f"{batches.describe(self.steps_per_batch)}, {info + ', ' if info else ''}"
                         f"device {self.dist_state.device}, dtype {str(dtype).replace('torch.', '')}")
        return self.logger

    def batches_left(self, step: int) -> int:
        """Items of `batches` the loop still takes from `step` on, to stop at `last_step`."""
        return math.ceil(max(0, self.last_step - step) / self.steps_per_batch)

    def lr(self, step: int, base_lr: Optional[float] = None) -> float:
        """The learning rate for optimizer step `step` (0-based): `get_lr` from `base_lr` (default: the run's)."""
        base = self.learning_rate if base_lr is None else base_lr
        return get_lr(step, self.total_steps, base, self.min_lr_ratio, self.warmup_steps)

    def save_due(self, step: int) -> bool:
        """True at the last step, and when the batch that ended at `step` (steps_per_batch steps: RL takes several
        per rollout batch) crossed a multiple of save_interval. save_interval <= 0: only at the last step."""
        every = self.save_interval
        return step >= self.last_step or (every > 0 and step // every > (step - self.steps_per_batch) // every)

    def save(self, step: int, model, optimizer, scaler, batches: Batches, *, name: Optional[str] = None,
             extra: Optional[dict] = None, weights: Callable = half_state_dict):
        """`save_checkpoint` to the files of `name` (default: the run's), with the run id and the flags."""
        weight_file, resume_file = self.files(name)
        save_checkpoint(weight_file, resume_file, model, optimizer, scaler, step, batches, self.dist_state,
                        run_id=self.logger.run_id, flags=self.flags, extra=extra, weights=weights)
        if weight_file not in self.saved:
            self.saved.append(weight_file)

    def maybe_save(self, step: int, model, optimizer, scaler, batches: Batches, *, extra: Optional[dict] = None,
                   weights: Callable = half_state_dict) -> bool:
        """`save` when `save_due(step)`; returns whether it saved."""
        due = self.save_due(step)
        if due:
            self.save(step, model, optimizer, scaler, batches, extra=extra, weights=weights)
        return due

    def finish(self, step: int):
        """The closing line (which weights were written), close the logger, leave the process group."""
        written = ", ".join(str(f) for f in self.saved or [self.weight_file])
        self.logger.info(f"done: {step} steps; weights -> {written}")
        self.logger.close()
        cleanup_distributed()
