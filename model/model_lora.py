"""LoRA (low-rank adaptation) for MiniMind, written from scratch (no peft).

A frozen linear layer y = W x gets a trainable low-rank update:

    y = W x + (alpha / r) * B (A x)        A: (r, in), B: (out, r), r << min(in, out)

A starts random (Kaiming-uniform, as nn.Linear and peft do) and B starts at zero, so a fresh adapter is an
exact no-op: training starts from the base model's behaviour and only B @ A (r * (in + out) numbers per
layer) is learned. `alpha / r` keeps the update's scale roughly independent of the rank you choose.

API
    apply_lora(model, rank, alpha, targets)   wrap the target nn.Linear layers in place; freeze everything else
    lora_state_dict(model)                    only the adapter tensors, keys like
                                              `model.layers.0.self_attn.q_proj.lora_A.weight`
    save_lora(model, path)                    atomic write of lora_state_dict, plus {path stem}.json with
                                              rank, alpha and targets (read back by `lora_meta`)
    load_lora(model, path)                    strict: every adapter key and shape must match
    merge_lora(model)                         fold (alpha/r) * B @ A into W and drop the adapters

The wrapped layer keeps the *same* `weight` Parameter under the same name, so the base keys of the state
dict do not change (`...q_proj.weight`): base checkpoints still load, and only `lora_A` / `lora_B` are added.
"""
import json
import math
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from model.atomic_io import atomic_save, atomic_write_text
from model.runtime import unwrap
from model.errors import UserError

# Every attention and MLP projection. In MoE models the MLP names also match each expert's projections
# (`mlp.experts.3.up_proj`, `mlp.shared_experts.0.down_proj`); the router (`mlp.gate`) is not an nn.Linear.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALoadError(UserError, RuntimeError):
    """An adapter file that does not match the adapters applied to the model."""


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update; drop-in for the layer it wraps."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        assert rank > 0, f"LoRA rank must be positive, got {rank}"
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        # Reuse the base Parameters themselves (not copies): no extra memory, same state-dict names, and a
        # weight tied elsewhere (embeddings <-> lm_head) stays tied.
        self.weight = base.weight
        self.bias = base.bias
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, **kw)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, **kw)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)  # B = 0: the adapter starts as an exact no-op
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The dense update (alpha/r) * B @ A, shape (out, in), computed in fp32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def parse_targets(targets) -> tuple:
    """'q,k,v,o,gate,up,down' or 'q_proj,...' or a list -> full module names ('q_proj', ...)."""
    if targets is None:
        return DEFAULT_TARGETS
    if isinstance(targets, str):
        targets = [t for t in targets.replace(" ", "").split(",") if t]
    names = []
    for t in targets:
        names.append(t if t.endswith("_proj") or t == "lm_head" else f"{t}_proj")
    return tuple(names)


def lora_modules(model) -> dict:
    """{qualified name: LoRALinear} in model order."""
    return {n: m for n, m in unwrap(model).named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model, rank: int = 8, alpha: float = 16.0, targets: Optional[Iterable[str]] = None,
               dropout: float = 0.0):
    """Wrap every nn.Linear whose own name is in `targets` with a LoRALinear; freeze all other parameters.

    In place; returns the model. `targets` takes full names ('q_proj') or short ones ('q'). A target that
    matches nothing is an error (a typo would otherwise train a silently smaller adapter). 'lm_head' is
    accepted only when it is not tied to the input embeddings (MiniMind ties them): merging an update into a
    tied matrix would change the embeddings too.
    """
    targets = parse_targets(targets)
    root = unwrap(model)
    if lora_modules(root):
        raise RuntimeError("apply_lora: the model already has LoRA adapters (merge_lora first to stack another)")
    found = {t: 0 for t in targets}
    # Collect first, replace after: never mutate a module tree while iterating over it.
    to_wrap = [(name, module) for name, module in root.named_modules()
               if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in found]
    embedding_params = {id(p) for m in root.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    tied = [name for name, module in to_wrap if id(module.weight) in embedding_params]
    if tied:
        raise ValueError(f"apply_lora: {tied} share their weight with the input embeddings (tie_word_embeddings); "
                         f"an adapter there could not be merged without changing the embeddings")
    for name, module in to_wrap:
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, LoRALinear(module, rank, alpha, dropout))
        found[child] += 1
    missing = [t for t, n in found.items() if n == 0]
    if missing:
        raise ValueError(f"apply_lora: target(s) {missing} match no nn.Linear in the model "
                         f"(known projection names: {', '.join(DEFAULT_TARGETS)})")
    for pname, p in root.named_parameters():
        p.requires_grad_(".lora_A." in pname or ".lora_B." in pname)
    return model


def lora_state_dict(model) -> dict:
    """Only the adapter tensors (detached, on CPU)."""
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()
            if ".lora_A." in k or ".lora_B." in k}


def lora_meta_path(path) -> Path:
    """The JSON beside an adapter file that records how it was trained: `lora/identity_512.pth` ->
    `lora/identity_512.json`. The .pth stays a plain tensor dict, as upstream MiniMind writes it."""
    return Path(path).with_suffix(".json")


def save_lora(model, path):
    """Write the adapter atomically (temp file + os.replace): an interrupted save never leaves a torn file.
    Rank, alpha and targets go to `lora_meta_path(path)`, so loaders need not be told the alpha again."""
    atomic_save(lora_state_dict(model), path)
    save_lora_meta(model, path)


def save_lora_meta(model, path):
    """Write rank, alpha and targets of the model's adapters to `lora_meta_path(path)`, atomically."""
    modules = lora_modules(model)
    assert modules, "save_lora: the model has no LoRA adapters (apply_lora first)"
    first = next(iter(modules.values()))
    meta = {"format": "minimind-lora", "rank": first.rank, "alpha": first.alpha,
            "targets": sorted({name.rsplit(".", 1)[-1] for name in modules})}
    atomic_write_text(lora_meta_path(path), json.dumps(meta, indent=2) + "\n")


def lora_meta(path) -> Optional[dict]:
    """{"rank", "alpha", "targets"} saved beside the adapter by save_lora; None for adapters without it
    (upstream files, or files written before it existed)."""
    meta_path = lora_meta_path(path)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LoRALoadError(f"{meta_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("alpha"), (int, float)):
        raise LoRALoadError(f"{meta_path}: expected a JSON object with a numeric 'alpha'")
    return meta


def load_lora(model, path):
    """Load an adapter saved by save_lora into a model that already went through apply_lora (same targets and
    rank). Strict: a missing, unexpected or differently shaped key raises LoRALoadError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA adapter not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    expected = lora_state_dict(model)
    if not expected:
        raise LoRALoadError(f"load_lora({path}): the model has no LoRA adapters; call apply_lora(model, rank, "
                            f"alpha, targets) with the settings the adapter was trained with first")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise LoRALoadError(
            f"load_lora({path}): adapter keys do not match the model's adapters "
            f"({len(missing)} missing, {len(unexpected)} unexpected); were --lora_targets / --num_hidden_layers / "
            f"--use_moe the same as in training?\n  missing: {missing[:3]}\n  unexpected: {unexpected[:3]}")
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
           if state[k].shape != v.shape]
    if bad:
        raise LoRALoadError(f"load_lora({path}): shape mismatch (different --lora_rank or --hidden_size?)\n  "
                            + "\n  ".join(bad[:3]))
    unwrap(model).load_state_dict(state, strict=False)  # the key sets were checked exactly above
    return model


@torch.no_grad()
def merge_lora(model):
    """Fold every adapter into its base weight (W += (alpha/r) B A) and put a plain nn.Linear back.

    The result is an ordinary MiniMind (original state-dict keys, no extra compute at inference) whose
    outputs equal base + adapter. Parameters keep their requires_grad (frozen after apply_lora).
    """
    root = unwrap(model)
    for name, module in list(lora_modules(root).items()):
        w = module.weight
        w.copy_((w.float() + module.delta_weight()).to(w.dtype))
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                           device="meta")
        linear.weight = w  # the same (now merged) Parameter, so ties and names survive
        if module.bias is not None:
            linear.bias = module.bias
        parent_name, _, child = name.rpartition(".")
        setattr(root.get_submodule(parent_name) if parent_name else root, child, linear)
    return model


def count_parameters(model) -> tuple:
    """(trainable, total) parameter counts; shared (tied) parameters counted once."""
    params = {id(p): p for p in unwrap(model).parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
