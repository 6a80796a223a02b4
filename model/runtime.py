"""Where and in what precision code runs: device choice, dtype, autocast, seeding, and the plain module under
the DDP / torch.compile wrappers (`unwrap`).

Shared by training (trainer/), inference (eval_llm.py, scripts/) and tests, so it lives in model/, the lowest
layer. Device order: Ascend NPU, then CUDA, then Apple MPS, then CPU; `--device` overrides.
"""
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch


def is_npu_available() -> bool:
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        return False
    return torch.npu.is_available()


def default_device() -> str:
    if is_npu_available():
        return "npu:0"
    if torch.cuda.is_available():
        return "cuda:0"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def is_accelerator(device) -> bool:
    """A CUDA GPU or an Ascend NPU ("cuda", "cuda:1", "npu:0"): one device per rank, and kernels chosen per input
    shape. Apple MPS and the CPU are neither here."""
    return str(device).split(":")[0] in ("cuda", "npu")  # a string test: "npu" parses only where torch_npu is loaded


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU multiplies bf16 in hardware: x86 AVX512-BF16 or AMX (Zen 4+, Sapphire Rapids+) or Arm
    BF16. There, oneDNN runs bf16 matmuls about 2x faster than fp32 and moves half the bytes, so CPU training
    under bf16 autocast is 1.5-2.6x faster for 1.6M-104M models (measured: scripts/benchmark.py, README) and
    decoding with bf16 weights about 1.8x. Without those instructions bf16 is emulated and slower than fp32."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:  # not Linux: no cheap, reliable probe, stay with fp32
        return False
    flags = set()
    for line in text.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """--dtype -> torch dtype. auto: bf16 on NPU, on CUDA where supported (else fp16 + GradScaler) and on CPUs
    with native bf16; fp32 elsewhere (MPS, older CPUs). Weights stay fp32 in training (autocast)."""
    kind = torch.device(device).type
    if name == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if kind == "npu":
            return torch.bfloat16
        if kind == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def autocast_context(device: str, dtype: torch.dtype):
    """Mixed precision for the forward pass (fp32 master weights); a no-op context in fp32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def setup_seed(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def unwrap(model):
    """The plain module under DDP and/or torch.compile wrappers (`.module`, `._orig_mod`)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)
