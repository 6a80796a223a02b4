"""Throughput benchmark: MiniMind's optimised training / decoding paths against the original MiniMind's (naive).

For each model config and stage it runs a few real optimizer steps on real data and reports tokens/s, padding,
step time, peak memory and (on CUDA) MFU; then batch-1 / batch-8 decoding and prefill latency.

    python scripts/benchmark.py                                   # 26m, all stages, optimised only
    python scripts/benchmark.py --compare --configs 26m,104m,moe  # optimised and naive, with speedups
    python scripts/benchmark.py --compare --stages pretrain,sft --steps 5 --batch_size 8 --max_seq_len 512
    python scripts/benchmark.py --smoke                           # tiny config, seconds on a CPU (CI)
    python scripts/benchmark.py --configs 26m,minimind3 --stages decode,rollout --compare  # decode vs roofline
    python scripts/benchmark.py --preset minimind2-small,minimind3,minimind3-moe --stages pretrain,sft

Model configs (--configs, or --preset for the released shapes; both may be given): 26m, 104m and moe are the
MiniMind2 presets minimind2-small, minimind2 and minimind2-moe under their old names; minimind3 (63.9M) and
minimind3-moe (198M, ~64M active) are the current generation (QK-norm, 4 KV heads, top-1 MoE without a shared
expert); tiny, tiny3 and tiny3-moe are 2-layer, 64-wide MiniMind2 / minimind-3 shapes for CI.

Stages (one row per config x stage x mode):
  pretrain  optimised: packed blocks of --max_seq_len tokens (PackedPretrainDataset + stack_collate), no padding.
            naive:     one document per row, every row padded to --max_seq_len (PretrainDataset + PadCollator(pad_to)).
  sft       optimised: length-grouped batches (ResumableSampler(lengths=JsonlFile.byte_lengths())) with dynamic
                       padding to the batch's longest sample (PadCollator()).
            naive:     random batches padded to --max_seq_len.
  dpo       policy forward/backward on [chosen; rejected] plus a frozen reference forward under no_grad.
            optimised: length-grouped + dynamic padding, log-probs as logit - logsumexp (trainer/train_dpo.py).
            naive:     padded to --max_seq_len, full log_softmax materialised (the original's way).
  grpo      rollout of --num_generations responses per prompt, a reference forward and the policy
            forward/backward on the rollout, one optimizer step (rule reward only: no reward model in the timing).
            optimised: trainer/rl_utils.rollout (model/generation.generate: preallocated KV cache, last-position
                       logits) and rl_utils.token_logps (only response logits, no materialised log-softmax).
            naive:     the decoding loop below (DynamicCache, full logits) and upstream's per-row log_softmax.
  rollout   (only when named in --stages) multi-turn tool episodes through model/tool_loop.run_episodes, the
            rollout of agent RL and the tool eval: --rollout_tasks x --num_generations episodes, --rollout_turns
            turns of up to --max_gen_len tokens, a tool result inserted after each turn but the last.
            optimised: every episode in one running batch, tool results appended to the live KV cache.
            naive:     one episode at a time (upstream's agent rollout). Real tokens = the sampled ones.
  decode    decode_b1: model/generation.stream_generate, one prompt; decode_b8: generation.generate, 8 prompts;
            prefill:   latency of one forward over a --prefill_len-token prompt (batch 1).
            naive:     transformers' DynamicCache (torch.cat per token and layer), logits for every position of
                       each forward (logits_to_keep=0), the attention mask and sequence grown with torch.cat.
            Decoding always runs --decode_tokens new tokens (EOS disabled) and its tokens/s includes the
            short prompt's prefill. The decode model is cast to the mode's dtype (as for serving); training
            keeps fp32 weights under autocast, as the stage scripts do.
            roofline:  a decode step reads every weight once for the whole batch, so it can go no faster than
                       batch x memory bandwidth / weight bytes. The bandwidth is probed beside each measured run
                       (an fp32 matrix-vector product over --bandwidth_mb MB, the way batch-1 decoding reads its
                       weights). Each decode row reports the roofline and the fraction of it that its decode steps
                       reached (the prefill and first token, timed by the same call for one token beside each run,
                       left out), and a decode table puts batch 8's aggregate against one request at a time, ours
                       and the original's (the naive batch 1, with --compare).

The optimised mode also uses the vectorised MoE dispatch, fused AdamW on CUDA and, with --compile,
torch.compile for the training forward (SFT/DPO batches padded to multiples of 64 and every shape compiled
before timing; GRPO compiled with dynamic shapes, so give it --warmup >= 2; decoding stays eager). On a GPU,
both modes also take one untimed step per padded length before timing (kernel choice, allocator). The naive
mode is eager, calls torch.cuda.empty_cache() after every step (a no-op without CUDA, but called), uses the
per-expert loop MoE (each naive model's MoE layers get `dispatch_reference` bound on the instance by
`use_reference_dispatch`; the MOEFeedForward class is never changed) and non-fused AdamW. Both modes use the
same seeded weights. Precision: on GPUs both modes use --dtype (autocast); on a CPU the naive mode is fp32, as
the original is there (it skips autocast when device_type == "cpu"), while the optimised mode uses --dtype
(auto: bf16 autocast on CPUs with native bf16, model.runtime.resolve_dtype).
Run once more with --dtype float32 to see the gain without bf16 (each row records its dtype).

Definitions (per measured step, warmup excluded):
  real tokens    non-padding positions that went through the model, counting every forward: the reference
                 forward (DPO, GRPO), the rollout (GRPO: real prompt tokens + each generated token once) and the
                 policy forward/backward. Real tokens/s = their sum / measured time.
  padded tokens  every position computed, padding included (B x T per forward); padding fraction =
                 1 - real / padded.
  step time      wall time of one step (host->device copy, forward, backward, clip, optimizer step; for GRPO
                 also the rollout and reward), with torch.cuda.synchronize() before and after; the mean is
                 the headline, the JSON also has the median and minimum (robust to load spikes). Decode: per
                 generated token; prefill: per forward. Batches are tokenized and collated before timing:
                 data loading overlaps compute in real training.
  batch, seq     rows per forward (DPO: 2 x pairs, [chosen; rejected]; GRPO: prompts x generations) and the
                 longest padded row length of the row's batches.
  peak memory    CUDA: torch.cuda.max_memory_allocated() during the row (weights, grads, optimizer state,
                 activations; reset before each row). CPU: growth of the peak resident set size during the
                 row (Linux VmHWM after resetting it via /proc/self/clear_refs, after malloc_trim; where that
                 is not allowed, the process-lifetime ru_maxrss growth, which undercounts later rows).
  model FLOPs    per real token, training (forward + backward): 6*N + 12*L*h*T; forward only (reference,
                 rollout, decode): 2*N + 4*L*h*T, where N = parameters used per token excluding the input
                 embedding but counting the lm_head matmul (tied weights counted once; MoE: shared experts +
                 top-k routed experts only), L = layers, h = attention width (heads x head_dim, the hidden size
                 in every released shape), T = the row's sequence length (for
                 decode: the mean context). This is the PaLM convention: attention is counted as full (not
                 causal) and the lm_head as computed at every position, whatever the code skips.
  MFU            model FLOPs / time / peak dense bf16 FLOP/s of the device (CUDA only; --peak_tflops or a
                 table by device name).

Weights are random (seeded): throughput does not depend on the values, only on shapes. Lengths come from real
data: /work/shared/data/bench/*.jsonl (resolved as <repo>/../shared/data/bench), else dataset/sample/*.jsonl;
the run says which. The first run on a corpus builds the token cache for packed pretraining (not timed).
CPU timings on a busy machine are noisy: compare modes within one --compare run, look at the median too, and
use --threads 1 when other jobs share the cores (OpenMP barriers then stall on descheduled threads).
"""
import argparse
import copy
import ctypes
import gc
import math
import os
import platform
import re
import resource
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset.lm_dataset import (IGNORE_INDEX, DPODataset, iter_jsonl, PackedPretrainDataset, PadCollator,  # noqa: E402
                                PretrainDataset, RLAIFDataset, SFTDataset, stack_collate)
from model.checkpoint import load_tokenizer  # noqa: E402
from model.generation import Sampling, generate, left_pad, stream_generate  # noqa: E402
from model.model_minimind import (PRESETS, MiniMindConfig, MiniMindForCausalLM, MOEFeedForward,  # noqa: E402
                                  StaticKVCache)
from model.runtime import autocast_context, default_device, is_accelerator, resolve_dtype, setup_seed  # noqa: E402
from model.tool_loop import Turn, new_episodes, run_episodes  # noqa: E402
from model.tools import tool_schemas  # noqa: E402
from scripts.script_utils import pyplot, save_figure, write_json  # noqa: E402
from trainer.rl_utils import (aggregate_loss, clipped_policy_loss, format_reward, group_advantages,  # noqa: E402
                              kl_k3, position_ids_from_mask, rollout, step_generator, token_logps)
from trainer.train_dpo import dpo_loss, sequence_logps  # noqa: E402
from trainer.trainer_utils import ResumableSampler, lm_loss, padding_multiple  # noqa: E402

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
# name -> (preset, overrides): MiniMindConfig.from_preset(preset, **overrides). Every preset is a config under
# its own name too (--preset); the old MiniMind2 names stay for earlier commands and result files.
CONFIGS = {
    "tiny": ("minimind2-small", TINY),
    "tiny3": ("minimind3", TINY),
    "tiny3-moe": ("minimind3-moe", TINY),
    "26m": ("minimind2-small", {}),
    "104m": ("minimind2", {}),
    "moe": ("minimind2-moe", {}),
    **{name: (name, {}) for name in PRESETS},
}
STAGES = ("pretrain", "sft", "dpo", "grpo", "decode", "rollout")
DEFAULT_STAGES = STAGES[:-1]  # the multi-turn tool rollout is asked for by name: --stages rollout
BENCH_DIR = ROOT.parent / "shared" / "data" / "bench"
SAMPLE_DIR = ROOT / "dataset" / "sample"
DATA_FILES = {"pretrain": "pretrain.jsonl", "sft": "sft.jsonl", "dpo": "dpo.jsonl", "rlaif": "rlaif.jsonl"}
# Peak dense bf16 tensor-core TFLOP/s (no sparsity), matched by substring of the CUDA device name, first hit wins.
PEAK_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("A10G", 70.0),
               ("L40S", 362.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0)]
SMOKE = dict(configs="tiny", steps=2, warmup=1, batch_size=2, max_seq_len=128, max_gen_len=8, num_generations=2,
             decode_tokens=8, decode_runs=1, prefill_len=64, bandwidth_mb=16)
DEFAULTS = dict(configs="26m", steps=10, warmup=2, batch_size=8, max_seq_len=512, max_gen_len=128,
                num_generations=4, decode_tokens=128, decode_runs=3, prefill_len=256, bandwidth_mb=256)


def log(msg):
    print(msg, flush=True)


# ================================================================================================================
# Devices, timing, memory
# ================================================================================================================
def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _read_status_kb(field):
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


class MemoryMeter:
    """Peak memory of one row; see the module docstring for what each kind means."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.device = device
        if self.cuda:
            self.kind = "cuda_max_memory_allocated"
        elif self._reset_hwm() and _read_status_kb("VmHWM") is not None:
            self.kind = "cpu_peak_rss_delta"
        else:
            self.kind = "cpu_maxrss_delta_lifetime"

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # Linux >= 4.0: reset the peak RSS (VmHWM) to the current RSS
            return True
        except OSError:
            return False

    def start(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # hand freed heap pages back to the OS, so this row's growth shows up in RSS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        if self.kind == "cpu_peak_rss_delta":
            self.base = _read_status_kb("VmRSS") * 1024
            self._reset_hwm()
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        if self.kind == "cpu_peak_rss_delta":
            peak = _read_status_kb("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0, peak - self.base) / 2 ** 20


def cpu_name() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        m = None
    return f"{m.group(1).strip() if m else platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def peak_tflops_for(device, override):
    """(peak TFLOP/s or None, where it came from)."""
    if override:
        return override, "--peak_tflops"
    if torch.device(device).type != "cuda":
        return None, "not a CUDA device: no MFU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return value, f"table entry {key!r} for {name!r}"
    return None, f"unknown device {name!r}: pass --peak_tflops for MFU"


CLOCK = time.perf_counter  # --clock cpu: time.process_time


def memory_bandwidth(device, nbytes: int, runs: int = 3) -> float:
    """Bytes per second that a matrix-vector product streams from memory: an fp32 matrix of `nbytes` (far larger
    than the caches) times a vector, the way batch-1 decoding reads its weights; the median of `runs` after one
    untimed run. A decode step can read its weights no faster than this: the roofline."""
    side = int(math.sqrt(nbytes / 4))
    w, x = torch.randn(side, side, device=device), torch.randn(side, device=device)
    times = []
    for i in range(runs + 1):
        sync(device)
        t0 = CLOCK()
        torch.mv(w, x)
        sync(device)
        if i:
            times.append(CLOCK() - t0)
    return side * side * 4 / float(np.median(times))


def dispatch_reference(self, x, topk_idx, topk_weight):
    """The original MiniMind's MoE routing (its training path): a per-expert loop with boolean masks.
    Bound on the MoE layers of naive models by `use_reference_dispatch`; tests also check the vectorised
    dispatch against it."""
    out = torch.zeros_like(x)
    for e, expert in enumerate(self.experts):
        for slot in range(topk_idx.shape[1]):
            sel = topk_idx[:, slot] == e
            if sel.any():
                out[sel] += expert(x[sel]) * topk_weight[sel, slot, None].to(x.dtype)
    return out


def use_reference_dispatch(model):
    """Make this model's MoE layers route the original way. The method is bound on each MOEFeedForward
    instance (an instance attribute wins over the class's method), so the class and every other model, the
    optimised rows' included, keep the vectorised dispatch; copy.deepcopy (DPO / GRPO reference) rebinds it to
    the copy."""
    for module in model.modules():
        if isinstance(module, MOEFeedForward):
            module.dispatch = types.MethodType(dispatch_reference, module)
    return model


# ================================================================================================================
# Model, FLOPs
# ================================================================================================================
def model_config(name) -> MiniMindConfig:
    preset, overrides = CONFIGS[name]
    return MiniMindConfig.from_preset(preset, **overrides)


def build_model(name, seed, device, naive=False):
    """The seeded model of config `name` (identical weights in both modes); naive: the per-expert MoE loop."""
    setup_seed(seed)
    model = MiniMindForCausalLM(model_config(name)).to(device)
    return use_reference_dispatch(model) if naive else model


def flops_params(model) -> dict:
    """N for the FLOP formulas: parameters used per token, without the embedding lookup, with the lm_head."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())  # tied embedding / lm_head counted once
    inactive = 0
    if cfg.use_moe:
        per_expert = sum(p.numel() for p in model.model.layers[0].mlp.experts[0].parameters())
        inactive = cfg.num_hidden_layers * (cfg.n_routed_experts - cfg.num_experts_per_tok) * per_expert
    # total = embedding (= lm_head, tied) + the rest; the matmul of the lm_head counts, the lookup does not.
    return {"params_m": total / 1e6, "flops_n": total - inactive, "active_params_m": (total - inactive) / 1e6}


def train_flops(n, cfg, tokens, seq_len):
    return tokens * (6 * n + 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len)


def forward_flops(n, cfg, tokens, seq_len):
    return tokens * (2 * n + 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len)


# ================================================================================================================
# Data: batches are built (tokenized, collated) before any timing
# ================================================================================================================
def resolve_data(args):
    if args.data_dir:
        data_dir, why = Path(args.data_dir), "--data_dir"
    elif args.smoke:
        data_dir, why = SAMPLE_DIR, "--smoke uses the bundled sample data"
    elif all((BENCH_DIR / f).is_file() for f in DATA_FILES.values()):
        data_dir, why = BENCH_DIR, "real benchmark data"
    else:
        data_dir, why = SAMPLE_DIR, f"fallback: {BENCH_DIR} not found"
    paths = {k: Path(getattr(args, f"{k}_path") or data_dir / f) for k, f in DATA_FILES.items()}
    for k, p in paths.items():
        if not p.is_file():
            raise SystemExit(f"error: {k} data not found: {p}")
    return paths, f"{data_dir} ({why})"


def chunks(order, batch_size, n_batches):
    """The first n_batches micro-batches of an index order, wrapping around a dataset that is too small."""
    need = batch_size * n_batches
    order = list(order)
    order = (order * (need // max(1, len(order)) + 1))[:need]
    return [order[i:i + batch_size] for i in range(0, need, batch_size)]


class Data:
    """Datasets shared by all rows, opened lazily (packed pretraining builds its token cache once)."""

    def __init__(self, args, tokenizer, paths):
        self.args, self.tok, self.paths = args, tokenizer, paths
        self._cache = {}

    def get(self, key, factory):
        if key not in self._cache:
            self._cache[key] = factory()
        return self._cache[key]

    def train_batches(self, stage, naive, n_batches):
        """Collated CPU batches for pretrain / sft / dpo, as the stage's real training script would build them."""
        a, tok = self.args, self.tok
        T, B = a.max_seq_len, a.batch_size
        if stage == "pretrain" and not naive:
            ds = self.get(("packed", T), lambda: PackedPretrainDataset(self.paths["pretrain"], tok, T))
            sampler = ResumableSampler(len(ds), seed=a.seed, shuffle=True, batch_size=B)
            return [stack_collate([ds[i] for i in c]) for c in chunks(iter(sampler), B, n_batches)]
        cls, path = {"pretrain": (PretrainDataset, "pretrain"), "sft": (SFTDataset, "sft"),
                     "dpo": (DPODataset, "dpo")}[stage]
        ds = self.get((stage, T), lambda: cls(self.paths[path], tok, T))
        if naive:  # the original: shuffled order, every row padded to max_seq_len
            order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(a.seed)).tolist()
            collate = PadCollator(tok.pad_token_id, pad_to=T)
        elif stage == "pretrain":  # not used (packing above), kept for symmetry
            raise AssertionError("optimised pretraining uses packed blocks")
        else:
            order = iter(ResumableSampler(len(ds), seed=a.seed, shuffle=True, batch_size=B,
                                          lengths=ds.data.byte_lengths()))
            collate = PadCollator(tok.pad_token_id,
                                  pad_multiple=a.pad_multiple or padding_multiple(a.device, a.compile))
        return [collate([ds[i] for i in c]) for c in chunks(order, B, n_batches)]

    def prompts(self, n, offset=0):
        """Chat-rendered prompts (with the generation header) from the RLAIF file."""
        ds = self.get(("rlaif",), lambda: RLAIFDataset(self.paths["rlaif"], self.tok, self.args.max_seq_len))
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(self.args.seed)).tolist()
        return [ds[order[(offset + i) % len(order)]]["prompt"] for i in range(n)]

    def questions(self, n):
        """`n` user questions of the bundled agent-RL tasks (dataset/sample/agent_rl.jsonl), cycled."""
        tasks = self.get(("agent",), lambda: [r for _, r in iter_jsonl(ROOT / "dataset" / "sample" / "agent_rl.jsonl")])
        users = [next(m["content"] for m in t["conversations"] if m["role"] == "user") for t in tasks]
        return [users[i % len(users)] for i in range(n)]

    def prefill_ids(self, length):
        """`length` real tokens: pretraining documents back to back."""
        ds = self.get(("pretrain", self.args.max_seq_len),
                      lambda: PretrainDataset(self.paths["pretrain"], self.tok, self.args.max_seq_len))
        ids, i = [], 0
        while len(ids) < length:
            ids += ds[i % len(ds)]["input_ids"]
            i += 1
        return ids[:length]


# ================================================================================================================
# Naive pieces (the original MiniMind's way)
# ================================================================================================================
def naive_sequence_logps(logits, labels):
    """DPO log-probs with the full (B, T, V) log_softmax materialised, as the original computed them."""
    logps = F.log_softmax(logits[:, :-1].float(), dim=-1)
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    picked = torch.gather(logps, 2, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


@torch.inference_mode()
def naive_generate(model, prompts, max_new_tokens, eos_token_id=2, pad_token_id=0, temperature=1.0,
                   generator=None):
    """Sampling the original way: transformers' DynamicCache (torch.cat per token per layer), logits for every
    position of each forward, mask and sequence grown with torch.cat. -> (sequences, attention_mask,
    response_mask, prompt_len)."""
    from transformers import DynamicCache
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_token_id, device)
    bsz, plen = ids.shape
    padded = bool((mask == 0).any())
    cache = DynamicCache()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask if padded else None, position_ids=positions,
                   cache=cache, use_cache=True).logits[:, -1]
    next_pos = positions[:, -1:] + 1
    seq, finished, alive = ids, torch.zeros(bsz, dtype=torch.bool, device=device), []
    for step in range(max_new_tokens):
        probs = F.softmax(logits.float() / temperature, dim=-1)
        tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        tok = torch.where(finished, torch.full_like(tok, pad_token_id), tok)
        alive.append(~finished)
        seq = torch.cat([seq, tok[:, None]], 1)
        finished = finished | (tok == eos_token_id)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        mask = torch.cat([mask, mask.new_ones(bsz, 1)], 1)
        logits = model(input_ids=tok[:, None], attention_mask=mask if padded else None, position_ids=next_pos,
                       cache=cache, use_cache=True).logits[:, -1]
        next_pos = next_pos + 1
    resp_mask = torch.stack(alive, 1).long()
    return seq, torch.cat([mask[:, :plen], resp_mask], 1), resp_mask, plen


def naive_token_logps(model, sequences, attention_mask, position_ids, n_response):
    """Upstream GRPO's get_per_token_logps: a (N, V) log_softmax materialised per row."""
    mask = attention_mask if bool((attention_mask == 0).any()) else None
    out = model(input_ids=sequences, attention_mask=mask, position_ids=position_ids, logits_to_keep=n_response + 1)
    logits = out.logits[:, :-1]
    rows = [torch.gather(lr.float().log_softmax(-1), 1, ids[:, None]).squeeze(1)
            for lr, ids in zip(logits, sequences[:, -n_response:])]
    return torch.stack(rows), out.aux_loss


class _EndsTurns(torch.nn.Module):
    """A model whose EOS has probability `p` at every step (the rollout benchmark: random weights would never end a
    turn): the EOS logit is set to log(p / (1 - p)) + logsumexp(the other logits)."""

    def __init__(self, model, eos_id: int, p: float):
        super().__init__()
        self.model, self.config, self.eos, self.bias = model, model.config, eos_id, math.log(p / (1 - p))

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        logits = out.logits
        others = logits.clone()
        others[..., self.eos] = float("-inf")
        logits[..., self.eos] = torch.logsumexp(others.float(), -1).to(logits.dtype) + self.bias
        return out


# ================================================================================================================
# Rows
# ================================================================================================================
class Bench:
    def __init__(self, args, tokenizer, data, device, dtype, peak_tflops):
        self.args, self.tok, self.data = args, tokenizer, data
        self.device, self.dtype, self.peak_tflops = device, dtype, peak_tflops
        self.cuda = torch.device(device).type == "cuda"
        self.cpu = torch.device(device).type == "cpu"
        self.meter = MemoryMeter(device)
        self.rows = []

    # ------------------------------------------------------------------ helpers
    def mode_dtype(self, naive):
        """The original wraps steps in autocast only off the CPU (`nullcontext()` when device_type == "cpu"), so
        its CPU path is fp32 whatever --dtype says; ours follows --dtype (auto: bf16 on CPUs with native bf16)."""
        return torch.float32 if naive and self.cpu else self.dtype

    def autocast(self, naive):
        return autocast_context(self.device, self.mode_dtype(naive))

    def make_scaler(self, naive):
        return torch.amp.GradScaler(torch.device(self.device).type, enabled=self.mode_dtype(naive) == torch.float16)

    def make_optimizer(self, model, naive):
        fused = self.cuda and not naive
        return torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)

    def optimizer_step(self, model, opt, scaler, loss, naive):
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if naive:
            torch.cuda.empty_cache()  # the original did this every step; a no-op without CUDA

    def timed(self, label, n_total, fn, before=None):
        """Run fn(i) for i in range(n_total), timing each call between CUDA syncs; returns [(seconds, result)]
        for the steps after warmup. `before(i)`, if given, runs untimed before each measured call (a probe that
        should see the same load as the step beside it)."""
        warmup = self.args.warmup
        out = []
        for i in range(n_total):
            if before is not None and i >= warmup:
                before(i)
            sync(self.device)
            t0 = CLOCK()
            result = fn(i)
            sync(self.device)
            dt = CLOCK() - t0
            tag = "warmup" if i < warmup else "step"
            log(f"[bench] {label}: {tag} {i + 1 if i < warmup else i - warmup + 1}/"
                f"{warmup if i < warmup else n_total - warmup} {dt * 1000:.0f} ms")
            if i >= warmup:
                out.append((dt, result))
        return out

    def add_row(self, cfg_name, stage, naive, model, timed, real, padded, flops, batch, seq_len,
                steps_per_call=1, **extra):
        """One result row; `timed` from `self.timed`, `steps_per_call` > 1 when one timed call holds several
        steps (decode: one call generates many tokens, the step time is per token)."""
        peak = self.meter.peak_mb()
        info = flops_params(model)
        times = [t / steps_per_call for t, _ in timed]
        seconds = sum(t for t, _ in timed)
        row = {"config": cfg_name, "stage": stage, "mode": "naive" if naive else "optimised",
               "dtype": str(self.mode_dtype(naive)).replace("torch.", ""),
               "batch_size": batch, "seq_len": seq_len, "steps": len(times) * steps_per_call,
               "real_tokens_per_s": real / seconds, "padded_tokens_per_s": padded / seconds,
               "padding_frac": 1.0 - real / padded if padded else 0.0,
               "step_time_ms": seconds / (len(times) * steps_per_call) * 1000,
               # robust to load spikes on a shared machine (per timed call, divided by steps_per_call)
               "median_step_time_ms": float(np.median(times)) * 1000, "min_step_time_ms": min(times) * 1000,
               "peak_mem_mb": peak, "mem_kind": self.meter.kind,
               "model_tflops": flops / seconds / 1e12,
               "mfu": flops / seconds / (self.peak_tflops * 1e12) if self.peak_tflops else None,
               "params_m": info["params_m"], "active_params_m": info["active_params_m"],
               "hidden_size": model.config.hidden_size, "num_hidden_layers": model.config.num_hidden_layers,
               "use_moe": model.config.use_moe, "qk_norm": model.config.qk_norm, **extra}
        self.rows.append(row)
        mfu = f", MFU {row['mfu'] * 100:.1f}%" if row["mfu"] is not None else ""
        log(f"[bench] {cfg_name}/{stage}/{row['mode']}: {row['real_tokens_per_s']:,.0f} real tok/s, "
            f"{row['padded_tokens_per_s']:,.0f} padded tok/s, padding {row['padding_frac'] * 100:.1f}%, "
            f"{row['step_time_ms']:.1f} ms/step, peak {peak:,.0f} MB{mfu}")

    # ------------------------------------------------------------------ pretrain / sft / dpo
    def train_row(self, cfg_name, stage, naive):
        a = self.args
        label = f"{cfg_name}/{stage}/{'naive' if naive else 'optimised'}"
        n_total = a.warmup + a.steps
        log(f"[bench] {label}: building {n_total} batches")
        batches = self.data.train_batches(stage, naive, n_total)
        self.meter.start()
        model = build_model(cfg_name, a.seed, self.device, naive)
        n, cfg = flops_params(model)["flops_n"], model.config
        ref = copy.deepcopy(model).eval().requires_grad_(False) if stage == "dpo" else None
        # dynamic=False: one static graph per padded length (few, see below) instead of an automatic switch to
        # dynamic shapes when a second length shows up, which would recompile again inside the timing.
        if a.compile and not naive:
            # dynamo's recompile limit counts the graphs of MiniMindForCausalLM.forward over every model compiled in
            # this process: without a reset, the third config fell back to eager (seen on an H100).
            torch._dynamo.reset()
        fwd = torch.compile(model, dynamic=False) if a.compile and not naive else model
        opt = self.make_optimizer(model, naive)
        scaler = self.make_scaler(naive)
        if stage == "dpo":
            logps_fn = naive_sequence_logps if naive else sequence_logps

            def loss_fn(m, b):  # train_dpo.py's loss, scoring rows with `logps_fn` (the original's way if naive)
                ids, labels, n = b["input_ids"], b["labels"], b["input_ids"].shape[0] // 2
                with torch.no_grad():
                    ref_logps = logps_fn(ref(input_ids=ids).logits, labels)
                out = m(input_ids=ids)
                logps = logps_fn(out.logits, labels)
                losses = dpo_loss(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], 0.1, "sigmoid")[0]
                return losses.mean() + out.aux_loss
        else:
            loss_fn = lambda m, b: lm_loss(m, b).loss  # noqa: E731
        model.train()

        def step(i):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batches[i].items() if torch.is_tensor(v)}
            with self.autocast(naive):
                loss = loss_fn(fwd, batch)
            self.optimizer_step(model, opt, scaler, loss, naive)

        if fwd is not model or is_accelerator(self.device):
            # A first-seen shape costs far more than a step: torch.compile compiles a graph for it, and on a GPU the
            # BLAS / attention kernels are picked and the caching allocator grows (26M SFT on an H200: ~180 ms
            # against 35 ms, twice inside a 10-step timing). Pay that once for every padded length the measured
            # batches use (at most max_seq_len / 64 with pad_multiple=64), untimed and in both modes: the timing
            # then shows the steady state that a long training run sees.
            firsts = {tuple(b["input_ids"].shape): i for i, b in reversed(list(enumerate(batches)))}
            log(f"[bench] {label}: one untimed step for each of {len(firsts)} shape(s) {sorted(firsts)}")
            for i in sorted(firsts.values()):
                step(i)
        timed = self.timed(label, n_total, step)
        real = padded = flops = 0
        passes = 2 if stage == "dpo" else 1  # DPO: the policy and the reference see the same rows
        for b in batches[a.warmup:]:
            r, p, T = int(b["attention_mask"].sum()), b["input_ids"].numel(), b["input_ids"].shape[1]
            real, padded = real + passes * r, padded + passes * p
            flops += train_flops(n, cfg, r, T) + (forward_flops(n, cfg, r, T) if stage == "dpo" else 0)
        rows_per_batch = batches[0]["input_ids"].shape[0]
        self.add_row(cfg_name, stage, naive, model, timed, real, padded, flops, rows_per_batch,
                     max(b["input_ids"].shape[1] for b in batches))

    # ------------------------------------------------------------------ grpo
    def grpo_row(self, cfg_name, naive):
        a, tok = self.args, self.tok
        label = f"{cfg_name}/grpo/{'naive' if naive else 'optimised'}"
        G = a.num_generations
        n_prompts = max(1, a.batch_size // G)
        n_total = a.warmup + a.steps
        prompt_batches = [self.data.prompts(n_prompts, offset=i * n_prompts) for i in range(n_total)]
        self.meter.start()
        model = build_model(cfg_name, a.seed, self.device, naive)
        n, cfg = flops_params(model)["flops_n"], model.config
        ref = copy.deepcopy(model).eval().requires_grad_(False)
        # Rollout lengths vary from step to step: compile with dynamic shapes instead of once per shape.
        fwd = torch.compile(model, dynamic=True) if a.compile and not naive else model
        opt = self.make_optimizer(model, naive)
        scaler = self.make_scaler(naive)
        model.train()
        temperature, beta = 1.0, 0.02

        def step(i):
            gen = step_generator(a.seed, 0, i, self.device)
            if naive:
                ids = [tok(p, add_special_tokens=False).input_ids[-a.max_seq_len:] for p in prompt_batches[i]]
                ids = [x for x in ids for _ in range(G)]
                model.eval()
                with self.autocast(naive):
                    seq, attn, resp_mask, plen = naive_generate(model, ids, a.max_gen_len, tok.eos_token_id,
                                                                tok.pad_token_id, temperature, gen)
                model.train()
                seq, attn, resp_mask = seq.clone(), attn.clone(), resp_mask.clone().float()
                responses = tok.batch_decode(seq[:, plen:].tolist(), skip_special_tokens=True)
                pos = position_ids_from_mask(attn)
                nresp = resp_mask.shape[1]
                with torch.no_grad(), self.autocast(naive):
                    ref_logps, _ = naive_token_logps(ref, seq, attn, pos, nresp)
                with self.autocast(naive):
                    logps, aux = naive_token_logps(fwd, seq, attn, pos, nresp)
            else:
                ro = rollout(model, tok, prompt_batches[i], a.max_gen_len, temperature, 1.0, a.max_seq_len,
                             num_generations=G, autocast=self.autocast(naive), generator=gen)
                seq, attn, resp_mask, plen, responses = (ro.sequences, ro.attention_mask, ro.response_mask,
                                                         ro.prompt_len, ro.responses)
                seq_args = (seq, attn, ro.position_ids, resp_mask.shape[1], temperature)
                with torch.no_grad(), self.autocast(naive):
                    ref_logps = token_logps(ref, *seq_args)
                with self.autocast(naive):
                    logps, aux = token_logps(fwd, *seq_args, with_aux=True)
            rewards = torch.tensor([format_reward(r) for r in responses], device=self.device)
            adv, _ = group_advantages(rewards, G)
            pg, _ = clipped_policy_loss(logps, logps.detach(), adv)
            loss = aggregate_loss(pg + beta * kl_k3(logps, ref_logps), resp_mask, "grpo") + aux
            self.optimizer_step(model, opt, scaler, loss, naive)
            return attn.detach(), resp_mask.detach(), plen

        timed = self.timed(label, n_total, step)
        real = padded = flops = 0
        for _, (attn, resp_mask, plen) in timed:
            rows, T = attn.shape
            n_gen = resp_mask.shape[1]
            seq_real, prompt_real, gen_real = int(attn.sum()), int(attn[:, :plen].sum()), int(resp_mask.sum())
            # rollout (prompt prefill + one position per generated token), reference forward, policy fwd+bwd
            real += prompt_real + gen_real + 2 * seq_real
            padded += rows * plen + rows * n_gen + 2 * rows * T
            flops += (forward_flops(n, cfg, prompt_real, plen) + forward_flops(n, cfg, gen_real, plen + n_gen / 2)
                      + forward_flops(n, cfg, seq_real, T) + train_flops(n, cfg, seq_real, T))
        rows = timed[0][1][0].shape[0]
        self.add_row(cfg_name, "grpo", naive, model, timed, real, padded, flops, rows,
                     max(r[0].shape[1] for _, r in timed), prompts=n_prompts, generations=G,
                     max_gen_len=a.max_gen_len,
                     mean_response_len=float(np.mean([float(r[1].sum(1).mean()) for _, r in timed])))

    # ------------------------------------------------------------------ rollout
    def rollout_row(self, cfg_name, naive):
        """Multi-turn tool rollouts through model/tool_loop.run_episodes (agent RL's, the tool eval's).
        optimised: every episode in one running batch, a turn's tool results appended to its live KV cache.
        naive:     one episode at a time (upstream's agent rollout), the same code otherwise.
        Random weights never write a call, so each reply is READ as one calculator call (parse=) and the EOS
        probability is set to 1/24 per token, so turns end at varied lengths as a trained model's do; a tool
        result is inserted after every turn but the last (--rollout_turns turns per episode)."""
        a, tok = self.args, self.tok
        label = f"{cfg_name}/rollout/{'naive' if naive else 'optimised'}"
        model = _EndsTurns(self.inference_model(cfg_name, naive), tok.eos_token_id, 1 / 24)
        call = [{"name": "calculate_math", "arguments": '{"expression": "6*7"}'}]
        tools = tool_schemas(["calculate_math"])
        questions = self.data.questions(a.rollout_tasks)
        convs = [[{"role": "user", "content": q}] for q in questions for _ in range(a.num_generations)]

        def run(i):
            gen = step_generator(a.seed, 0, i, self.device)
            eps = new_episodes(tok, convs, [tools] * len(convs), [None] * len(convs))
            kw = dict(max_turns=a.rollout_turns, max_new_tokens=a.max_gen_len, max_total_len=4096,
                      sampling=Sampling(1.0, generator=gen), run=lambda name, args: ('{"result": "42"}', True),
                      parse=lambda text: Turn("", call))
            for part in ([[e] for e in eps] if naive else [eps]):
                run_episodes(model, tok, part, **kw)
            return sum(sum(e.mask) for e in eps), sum(len(e.mask) - sum(e.mask) for e in eps), \
                sum(len(e.turns) for e in eps) / len(eps)

        timed = self.timed(label, a.warmup + a.decode_runs, run)
        sampled = sum(r[0] for _, r in timed)
        inserted = sum(r[1] for _, r in timed)
        flops = forward_flops(flops_params(model.model)["flops_n"], model.config, sampled + inserted, 256)
        self.add_row(cfg_name, "rollout", naive, model.model, timed, sampled, sampled, flops, len(convs), 4096,
                     episodes=len(convs), turns_per_episode=float(np.mean([r[2] for _, r in timed])),
                     inserted_tokens=inserted)

    # ------------------------------------------------------------------ decode
    def inference_model(self, cfg_name, naive):
        """A fresh model per row, built after the memory meter starts: peak memory includes the weights, as in
        the training rows. The weights are cast to the mode's dtype, as for serving (scripts/model_loading.py)."""
        self.meter.start()
        model = build_model(cfg_name, self.args.seed, self.device, naive).eval()
        return model.to(self.mode_dtype(naive))

    def decode_rows(self, cfg_name, naive):
        a, tok = self.args, self.tok
        enc = lambda texts: [tok(t, add_special_tokens=False).input_ids[-a.max_seq_len:] for t in texts]  # noqa
        self.decode_row(cfg_name, naive, "decode_b1", enc(self.data.prompts(1)))
        self.decode_row(cfg_name, naive, "decode_b8", enc(self.data.prompts(8)))
        self.prefill_row(cfg_name, naive)

    def decode_row(self, cfg_name, naive, name, prompts):
        a, pad = self.args, self.tok.pad_token_id
        label = f"{cfg_name}/{name}/{'naive' if naive else 'optimised'}"
        N = a.decode_tokens
        model = self.inference_model(cfg_name, naive)
        kw = dict(max_new_tokens=N, temperature=1.0, eos_token_id=-1, pad_token_id=pad)  # EOS off: N tokens

        def run(i, n=N):
            gen = step_generator(a.seed, 0, i, self.device)
            if naive:
                seq, *_ = naive_generate(model, prompts, n, -1, pad, 1.0, gen)
                return seq.shape[1] - max(len(p) for p in prompts)
            if len(prompts) == 1:
                return sum(1 for _ in stream_generate(model, prompts[0], generator=gen, **{**kw, "max_new_tokens": n}))
            return generate(model, prompts, generator=gen, **{**kw, "max_new_tokens": n}).responses.shape[1]

        # Before each measured run, untimed by the row: the bandwidth probe, and the same call for one token (the
        # prompt's prefill and the first sample), whose time taken from the run's leaves the N - 1 decode steps.
        # Both see the same load as the run beside them on a shared machine.
        bandwidths, firsts = [], []

        def before(i):
            bandwidths.append(memory_bandwidth(self.device, a.bandwidth_mb << 20))
            sync(self.device)
            t0 = CLOCK()
            run(i, 1)
            sync(self.device)
            firsts.append(CLOCK() - t0)

        timed = self.timed(label, a.warmup + a.decode_runs, run, before=before)
        steps = sum(r for _, r in timed)
        assert steps == N * len(timed), f"{label}: expected {N} new tokens per run, got {steps}"
        tokens = steps * len(prompts)
        prompt_len = float(np.mean([len(p) for p in prompts]))
        n_used = flops_params(model)["flops_n"]
        flops = forward_flops(n_used, model.config, tokens, prompt_len + N / 2)
        # The roofline: each step reads every weight once (the tied embedding once, as the lm_head; MoE: the active
        # experts only) for the whole batch, at the bandwidth measured beside the runs.
        bandwidth = float(np.median(bandwidths))
        weight_bytes = n_used * torch.finfo(self.mode_dtype(naive)).bits // 8
        roofline = len(prompts) * bandwidth / weight_bytes
        median_tps = len(prompts) / (float(np.median([t for t, _ in timed])) / N)
        decode_s = float(np.median([t - t1 for (t, _), t1 in zip(timed, firsts)]))
        decode_tps = len(prompts) * (N - 1) / decode_s if decode_s > 0 else float("nan")
        self.add_row(cfg_name, name, naive, model, timed, tokens, tokens, flops, len(prompts),
                     max(len(p) for p in prompts) + N, steps_per_call=N, prompt_len=prompt_len, new_tokens=N,
                     median_tokens_per_s=median_tps, decode_tokens_per_s=decode_tps,
                     mem_bandwidth_gbs=bandwidth / 1e9, weight_mb_per_step=weight_bytes / 1e6,
                     roofline_tokens_per_s=roofline, roofline_frac=decode_tps / roofline)

    def prefill_row(self, cfg_name, naive):
        a = self.args
        stage = f"prefill_{a.prefill_len}"
        label = f"{cfg_name}/{stage}/{'naive' if naive else 'optimised'}"
        ids = torch.tensor([self.data.prefill_ids(a.prefill_len)], device=self.device)
        model = self.inference_model(cfg_name, naive)

        @torch.inference_mode()
        def prefill(i):
            if naive:  # DynamicCache, logits for all positions
                from transformers import DynamicCache
                out = model(input_ids=ids, cache=DynamicCache(), use_cache=True)
            else:  # preallocated cache, logits for the last position only
                cache = StaticKVCache(model.config, 1, ids.shape[1] + 1, device=self.device, dtype=model.dtype)
                out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
            return out.logits.shape[1]

        timed = self.timed(label, a.warmup + max(3, a.decode_runs), prefill)
        tokens = ids.shape[1] * len(timed)
        flops = forward_flops(flops_params(model)["flops_n"], model.config, tokens, ids.shape[1])
        self.add_row(cfg_name, stage, naive, model, timed, tokens, tokens, flops, 1, ids.shape[1],
                     latency_ms=sum(t for t, _ in timed) / len(timed) * 1000)


# ================================================================================================================
# Report
# ================================================================================================================
def compare(rows):
    """optimised / naive for each (config, stage) measured in both modes."""
    by_key = {(r["config"], r["stage"], r["mode"]): r for r in rows}
    out = []
    for (cfg, stage, mode), opt in by_key.items():
        naive = by_key.get((cfg, stage, "naive"))
        if mode != "optimised" or naive is None:
            continue
        ratio = {"config": cfg, "stage": stage,
                 "speedup": opt["real_tokens_per_s"] / naive["real_tokens_per_s"],
                 "step_time_ratio": opt["step_time_ms"] / naive["step_time_ms"],
                 "mem_ratio": opt["peak_mem_mb"] / naive["peak_mem_mb"] if naive["peak_mem_mb"] > 0 else None}
        out.append(ratio)
        opt["speedup"], opt["mem_ratio"] = ratio["speedup"], ratio["mem_ratio"]
    return out


def decode_summary(rows):
    """Per config and mode: decode tokens/s at batch 1 and 8 (the decode steps alone, medians of the runs) against
    the roofline, and the batch-8 aggregate against one request at a time, ours (same mode) and the original's
    (the naive batch 1)."""
    by_key = {(r["config"], r["stage"], r["mode"]): r for r in rows}
    out = []
    for (cfg, stage, mode), b8 in by_key.items():
        b1 = by_key.get((cfg, "decode_b1", mode))
        if stage != "decode_b8" or b1 is None:
            continue
        naive_b1 = by_key.get((cfg, "decode_b1", "naive"))
        out.append({"config": cfg, "mode": mode, "dtype": b8["dtype"],
                    "b1_tokens_per_s": b1["decode_tokens_per_s"], "b8_tokens_per_s": b8["decode_tokens_per_s"],
                    "b1_roofline_tokens_per_s": b1["roofline_tokens_per_s"],
                    "b8_roofline_tokens_per_s": b8["roofline_tokens_per_s"],
                    "b1_roofline_frac": b1["roofline_frac"], "b8_roofline_frac": b8["roofline_frac"],
                    "mem_bandwidth_gbs": b1["mem_bandwidth_gbs"], "weight_mb_per_step": b1["weight_mb_per_step"],
                    "b8_vs_b1": b8["decode_tokens_per_s"] / b1["decode_tokens_per_s"],
                    "b8_vs_naive_b1": b8["decode_tokens_per_s"] / naive_b1["decode_tokens_per_s"]
                    if naive_b1 and mode == "optimised" else None})
    return out


def decode_table(summary) -> str:
    lines = ["decode steps (prefill and first token left out; median of the runs; roofline = batch x measured "
             "bandwidth / weight bytes read per step):",
             f"{'config':<12} {'mode':<9} {'dtype':<8} {'weights':>8} {'GB/s':>5} {'b1 tok/s':>9} {'of roof':>7} "
             f"{'b8 tok/s':>9} {'of roof':>7} {'b8/b1':>6} {'b8/orig b1':>10}"]
    for d in summary:
        vs = f"{d['b8_vs_naive_b1']:.2f}x" if d["b8_vs_naive_b1"] else "-"
        lines.append(f"{d['config']:<12} {d['mode']:<9} {d['dtype']:<8} {d['weight_mb_per_step']:>6.0f}MB "
                     f"{d['mem_bandwidth_gbs']:>5.1f} {d['b1_tokens_per_s']:>9.1f} {d['b1_roofline_frac']:>7.0%} "
                     f"{d['b8_tokens_per_s']:>9.1f} {d['b8_roofline_frac']:>7.0%} {d['b8_vs_b1']:>5.2f}x {vs:>10}")
    return "\n".join(lines)


def table(rows) -> str:
    import pandas as pd
    df = pd.DataFrame(rows)
    cols = {"config": "config", "stage": "stage", "mode": "mode", "dtype": "dtype", "batch_size": "batch",
            "seq_len": "seq",
            "real_tokens_per_s": "real tok/s", "padded_tokens_per_s": "padded tok/s", "padding_frac": "pad %",
            "step_time_ms": "step ms", "median_step_time_ms": "med ms", "peak_mem_mb": "peak MB",
            "model_tflops": "TFLOP/s", "mfu": "MFU %", "speedup": "speedup", "mem_ratio": "mem ratio"}
    df = df[[c for c in cols if c in df.columns]].rename(columns=cols)
    for c in ("pad %", "MFU %"):
        if c in df:
            df[c] = df[c].astype(float) * 100
    fmt = {"real tok/s": "{:,.0f}", "padded tok/s": "{:,.0f}", "pad %": "{:.1f}", "step ms": "{:,.1f}",
           "med ms": "{:,.1f}", "peak MB": "{:,.0f}", "TFLOP/s": "{:.3f}", "MFU %": "{:.1f}", "speedup": "{:.2f}x",
           "mem ratio": "{:.2f}"}
    for c, f in fmt.items():
        if c in df:
            df[c] = [f.format(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "-"
                     for v in df[c]]
    return df.to_string(index=False)


def plot(rows, path: Path, title: str) -> Path:
    """Horizontal bars of real tokens/s per (config, stage), naive vs optimised on a log axis (stages differ by
    orders of magnitude), with the speedup written beside each optimised bar."""
    plt = pyplot()
    keys = list(dict.fromkeys((r["config"], r["stage"]) for r in rows))
    by_key = {(r["config"], r["stage"], r["mode"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(keys) + 1.4), dpi=110)
    for i, (cfg, stage) in enumerate(keys):
        y = len(keys) - 1 - i
        naive, opt = by_key.get((cfg, stage, "naive")), by_key.get((cfg, stage, "optimised"))
        for row, dy, color in ((naive, 0.2, "#b0b0b0"), (opt, -0.2, "#2f6db5")):
            if row:
                ax.barh(y + dy, row["real_tokens_per_s"], height=0.38, color=color)
        if naive and opt:
            speedup = opt["real_tokens_per_s"] / naive["real_tokens_per_s"]
            ax.text(opt["real_tokens_per_s"] * 1.08, y - 0.2, f"{speedup:.2f}x", va="center", fontsize=8)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels([f"{c} {s}" for c, s in reversed(keys)], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("real tokens/s (padding excluded)")
    ax.set_title(title, fontsize=9, pad=22)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color="#b0b0b0"), plt.Rectangle((0, 0), 1, 1, color="#2f6db5")],
              labels=["original-style (--naive)", "this repo"], fontsize=8, loc="lower center",
              bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)  # just above the bars, under the title
    ax.set_xlim(right=ax.get_xlim()[1] * 2)  # room for the speedup labels
    fig.tight_layout()
    return save_figure(fig, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="MiniMind throughput benchmark (optimised vs the original's way)",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Definitions of every column are in the module docstring.")
    p.add_argument("--configs", type=str, default=None,
                   help=f"comma list of {', '.join(CONFIGS)} (default 26m, unless --preset is given)")
    p.add_argument("--preset", type=str, default=None,
                   help=f"comma list of released shapes to benchmark: {', '.join(PRESETS)} (rows named after "
                        f"them; added to --configs)")
    p.add_argument("--stages", type=str, default=",".join(DEFAULT_STAGES),
                   help=f"comma list of {', '.join(STAGES)} (default: all but rollout)")
    p.add_argument("--steps", type=int, default=None, help="measured steps per row (default 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2)")
    p.add_argument("--batch_size", type=int, default=None,
                   help="rows per micro-batch (DPO: pairs; GRPO: prompts x generations) (default 8)")
    p.add_argument("--max_seq_len", type=int, default=None, help="pretrain block / SFT, DPO truncation (512)")
    p.add_argument("--max_gen_len", type=int, default=None, help="GRPO response length (default 128)")
    p.add_argument("--num_generations", type=int, default=None, help="GRPO responses per prompt (default 4)")
    p.add_argument("--decode_tokens", type=int, default=None, help="new tokens per decode run (default 128)")
    p.add_argument("--rollout_tasks", type=int, default=8, help="rollout: tasks (x --num_generations episodes)")
    p.add_argument("--rollout_turns", type=int, default=3, help="rollout: turns per episode")
    p.add_argument("--decode_runs", type=int, default=None, help="measured decode runs (default 3)")
    p.add_argument("--prefill_len", type=int, default=None, help="prompt tokens for the prefill latency (256)")
    p.add_argument("--bandwidth_mb", type=int, default=None,
                   help="matrix size for the memory-bandwidth probe of the decode roofline (default 256)")
    p.add_argument("--device", type=str, default=None, help="default: model.runtime.default_device()")
    p.add_argument("--dtype", type=str, default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="optimised rows; auto = bf16 where supported, CPUs with native bf16 included "
                        "(model.runtime.resolve_dtype). Naive CPU rows are always fp32, as in the original")
    p.add_argument("--naive", action="store_true", help="run only the original MiniMind's way")
    p.add_argument("--compare", action="store_true", help="run both modes and report optimised / naive")
    p.add_argument("--compile", action="store_true", help="torch.compile the training model (optimised mode)")
    p.add_argument("--pad_multiple", type=int, default=0,
                   help="optimised SFT/DPO: pad each batch to a multiple of this (default: the stage scripts' "
                        "trainer_utils.padding_multiple: 64 on GPUs/NPUs and with --compile, else 1)")
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak dense bf16 TFLOP/s for MFU")
    p.add_argument("--data_dir", type=str, default=None,
                   help=f"folder with {', '.join(DATA_FILES.values())} (default {BENCH_DIR}, else {SAMPLE_DIR})")
    for k in DATA_FILES:
        p.add_argument(f"--{k}_path", type=str, default=None, help=f"override the {k} file")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice). On a CPU shared with other jobs, 1 thread "
                        "avoids OpenMP barriers stalling on a descheduled thread (ms per small op)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: time steps by this process's CPU time (with --threads 1 on a CPU only): on a machine "
                        "shared with other jobs, what the same run takes on a quiet one, less cache contention")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", type=str, default=str(ROOT / "out" / "benchmark.json"))
    p.add_argument("--plot", type=str, default=None, help="bar chart PNG (default: --output with .png)")
    p.add_argument("--smoke", action="store_true",
                   help="CI check: tiny config, 2 steps, 1 warmup, all stages, both modes, sample data")
    args = p.parse_args(argv)
    presets = [c.strip() for c in (args.preset or "").split(",") if c.strip()]
    for name in presets:
        if name not in PRESETS:
            p.error(f"--preset: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    if presets and args.configs is None:
        args.configs = ""  # --preset alone: only the presets, not the default 26m as well
    defaults = SMOKE if args.smoke else DEFAULTS
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, defaults.get(k, v))
    if args.smoke and not args.naive:
        args.compare = True  # both modes, unless --naive asks for the naive one only
    args.configs = list(dict.fromkeys([c.strip() for c in args.configs.split(",") if c.strip()] + presets))
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    for c in args.configs:
        if c not in CONFIGS:
            p.error(f"--configs: unknown config {c!r} (choose from {', '.join(CONFIGS)})")
    for s in args.stages:
        if s not in STAGES:
            p.error(f"--stages: unknown stage {s!r} (choose from {', '.join(STAGES)})")
    if args.naive and args.compare:
        p.error("--naive and --compare exclude each other (--compare already runs the naive mode)")
    for k in ("steps", "batch_size", "max_seq_len", "max_gen_len", "decode_tokens", "decode_runs", "prefill_len",
              "bandwidth_mb"):
        if getattr(args, k) < 1:
            p.error(f"--{k} must be >= 1")
    if args.decode_tokens < 2:
        p.error("--decode_tokens must be >= 2 (decode speed leaves out the first token, which comes with the prefill)")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.clock == "cpu" and (args.threads != 1 or (args.device or "cpu") != "cpu"):
        p.error("--clock cpu needs --threads 1 and --device cpu (CPU time adds up every thread's)")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.num_generations < 2:
        p.error("--num_generations must be >= 2 (GRPO's baseline is the group mean)")
    return args


def main(argv=None):
    global CLOCK
    args = parse_args(argv)
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device = args.device or default_device()
    dtype = resolve_dtype(args.dtype, device)
    if args.compile:
        # One static graph per padded length (max_seq_len / 64 of them) must fit under dynamo's recompile limit.
        import torch._dynamo.config as dynamo_config
        name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo_config, name, max(getattr(dynamo_config, name), args.max_seq_len // 64 + 2))
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak, peak_src = peak_tflops_for(device, args.peak_tflops)
    paths, data_src = resolve_data(args)
    tokenizer = load_tokenizer()
    # Move the import-time objects (torch, transformers) out of the collector's reach: the gc.collect() before
    # each row then takes milliseconds instead of half a second.
    gc.collect()
    gc.freeze()
    modes = [False, True] if args.compare else [args.naive]
    device_name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else cpu_name()
    log(f"[bench] device {device} ({device_name}), dtype {str(dtype).replace('torch.', '')}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.clock} clock, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else '-'}")
    log(f"[bench] data: {data_src}")
    log(f"[bench] peak TFLOP/s for MFU: {peak if peak else '-'} ({peak_src})")
    for name in args.configs:
        preset, overrides = CONFIGS[name]
        log(f"[bench] config {name}: preset {preset}" + (f" with {overrides}" if overrides else ""))
    log("[bench] weights are random (seeded): throughput depends on shapes, not values")

    bench = Bench(args, tokenizer, Data(args, tokenizer, paths), device, dtype, peak)
    t0 = time.time()
    for cfg in args.configs:
        for stage in args.stages:
            for naive in modes:
                if stage in ("pretrain", "sft", "dpo"):
                    bench.train_row(cfg, stage, naive)
                elif stage == "grpo":
                    bench.grpo_row(cfg, naive)
                elif stage == "rollout":
                    bench.rollout_row(cfg, naive)
                else:
                    bench.decode_rows(cfg, naive)
    ratios = compare(bench.rows)
    decode = decode_summary(bench.rows)
    log("\n" + table(bench.rows))
    if decode:
        log("\n" + decode_table(decode))
    if ratios:
        log("speedup = optimised real tokens/s / naive real tokens/s (prefill: naive latency / optimised latency); "
            "mem ratio = optimised peak memory / naive peak memory")
    log(f"real tok/s counts non-padding tokens of every forward (reference and rollout included); "
        f"peak MB = {bench.meter.kind}")

    result = {
        "meta": {"device": device, "device_name": device_name, "dtype": str(dtype).replace("torch.", ""),
                 "clock": args.clock, "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
                 "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
                 "peak_tflops": peak, "peak_tflops_source": peak_src, "data": data_src,
                 "data_files": {k: str(v) for k, v in paths.items()}, "memory_kind": bench.meter.kind,
                 "args": {k: v for k, v in vars(args).items()}, "seconds": time.time() - t0,
                 "definitions": {
                     "real_tokens_per_s": "non-padding positions of every forward (policy, reference, rollout) "
                                          "per second of measured step time",
                     "padded_tokens_per_s": "all positions computed, padding included, per second",
                     "padding_frac": "1 - real / padded",
                     "step_time_ms": "mean wall time per measured step (CUDA synchronised); decode: per token "
                                     "step; prefill: per forward",
                     "model_tflops": "train tokens x (6N + 12 L h T) + forward-only tokens x (2N + 4 L h T), "
                                     "per second",
                     "mfu": "model_tflops / peak_tflops (CUDA only)",
                     "speedup": "optimised real_tokens_per_s / naive real_tokens_per_s",
                     "roofline_tokens_per_s": "decode: batch x mem_bandwidth / weight bytes read per step (every "
                                              "weight once per step, the tied embedding once, MoE: active "
                                              "experts; KV-cache reads left out)",
                     "median_tokens_per_s": "decode: batch x new tokens / median run time (prefill included)",
                     "decode_tokens_per_s": "decode: batch x (new tokens - 1) / median of (run time - time of the "
                                            "same call for 1 token): the decode steps alone",
                     "roofline_frac": "decode: decode_tokens_per_s / roofline_tokens_per_s",
                     "mem_bandwidth_gbs": "fp32 matrix-vector product over --bandwidth_mb (median of 3), before "
                                          "each measured decode run; the median over the runs"}},
        "rows": bench.rows,
        "comparison": ratios,
        "decode": decode,
    }
    out = Path(args.output)
    write_json(result, out)
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    dtypes = ", ".join(dict.fromkeys(f"{r['mode']} {r['dtype']}" for r in bench.rows))
    plot(bench.rows, png, f"MiniMind benchmark: {device_name}, torch {torch.__version__}\n{dtypes}")
    log(f"[bench] wrote {out} and {png} ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
