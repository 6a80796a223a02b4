"""MiniMind: a small decoder (dense or MoE) in plain PyTorch, for both released generations.

One file, top to bottom: config + presets -> RMSNorm -> RoPE (with optional YaRN) -> attention (GQA, optional
QK-norm, SDPA, KV cache) -> SwiGLU feed-forward -> MoE feed-forward -> decoder block -> model -> causal-LM head.

Two generations, one code path, chosen by the config (`MiniMindConfig.from_preset`):
  * MiniMind2 (the default): Llama's math. Dense exports to `LlamaForCausalLM`; MoE adds a shared expert.
  * minimind-3: Qwen3's math (QK-norm, explicit head_dim, rms eps 1e-6); dense = `Qwen3ForCausalLM`,
    MoE (top-1 of 4 experts, no shared expert) = `Qwen3MoeForCausalLM`.
The state-dict keys are exactly those of upstream's releases of each generation, so their `.pth` files load
with `strict=True`. The classes subclass transformers' `PretrainedConfig` / `PreTrainedModel` /
`GenerationMixin`, so `save_pretrained`, `from_pretrained(trust_remote_code=True)` and `generate()` work
(transformers 4.57 and 5.x). This file is also the remote code of `torch2hf` exports: it imports nothing from
the repository.
"""
import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F
import transformers
from torch import nn

try:  # torch >= 2.5: block-sparse attention for packed documents (used when a BlockMask is passed)
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # pragma: no cover - older torch: document-aware attention uses SDPA with a boolean mask
    BlockMask, flex_attention = None, None
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

TRANSFORMERS_V5 = int(transformers.__version__.split(".")[0]) >= 5

# ---- transformers' name for the KV cache (the one place that knows it) ------------------------------------------
# transformers 5.24 renamed the cache that generate() passes to forward(), and the output field it reads back,
# from `past_key_values` to `cache` (the old name keeps working there with a deprecation warning until 5.40).
# Our forward() accepts both keywords, and returns the cache under the field the installed version declares,
# read from transformers' own output dataclass rather than from a version number.
CACHE_FIELD = ("cache" if "cache" in {f.name for f in dataclasses.fields(MoeCausalLMOutputWithPast)}
               else "past_key_values")


def pick_cache(cache, past_key_values):
    """The cache passed under either name (`cache` on transformers >= 5.24, `past_key_values` before)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the KV cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values

# YaRN settings used by the original MiniMind when `inference_rope_scaling=True`:
# a model trained at 2048 tokens is stretched 16x.
YARN_ROPE_SCALING = {
    "type": "yarn",
    "factor": 16,
    "original_max_position_embeddings": 2048,
    "beta_fast": 32,
    "beta_slow": 1,
    "attention_factor": 1.0,
}


def minimind3_intermediate_size(hidden_size: int) -> int:
    """minimind-3's rule: pi * hidden, rounded up to a multiple of 64 (768 -> 2432)."""
    return 64 * math.ceil(hidden_size * math.pi / 64)


# The released shapes. MiniMind2 presets are MiniMindConfig's defaults plus a size; minimind-3 presets switch on
# its architecture (QK-norm, 4 KV heads, rms eps 1e-6, top-1 MoE without a shared expert, Switch aux loss).
# `from_preset` recomputes the minimind-3 intermediate size from the (possibly overridden) hidden size.
MINIMIND3 = dict(hidden_size=768, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                 qk_norm=True, rms_norm_eps=1e-6, n_routed_experts=4, num_experts_per_tok=1,
                 n_shared_experts=0, aux_loss_type="switch", aux_loss_alpha=5e-4)
PRESETS = {
    "minimind2-small": dict(hidden_size=512, num_hidden_layers=8),                  # 25.83M
    "minimind2": dict(hidden_size=768, num_hidden_layers=16),                       # 104.03M
    "minimind2-moe": dict(hidden_size=640, num_hidden_layers=8, use_moe=True),      # 145.03M
    "minimind3": dict(MINIMIND3),                                                   # 63,912,192
    "minimind3-moe": dict(MINIMIND3, use_moe=True),                                 # 198,416,640 (~64M active)
}
AUX_LOSS_TYPES = ("seq", "batch", "switch")

# Field names of upstream's minimind-3 config.json -> ours (MiniMind2's names, which stay canonical).
UPSTREAM3_NAMES = {"num_experts": "n_routed_experts", "router_aux_loss_coef": "aux_loss_alpha"}


class MiniMindConfig(PretrainedConfig):
    """Both generations. Defaults are MiniMind2-small; `from_preset` gives every released shape.

    Loading upstream's minimind-3 config.json works as is: its names `num_experts` / `router_aux_loss_coef` are
    read as `n_routed_experts` / `aux_loss_alpha`, and a config written with those names and without our
    `qk_norm` field is a minimind-3 one (QK-norm on, no shared expert, Switch aux loss) unless it says otherwise.
    """

    model_type = "minimind"
    # Read access under upstream minimind-3's names too (`config.num_experts`).
    attribute_map = dict(UPSTREAM3_NAMES)

    def __init__(
        self,
        dropout: float = 0.0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        pad_token_id: int = 0,
        hidden_act: str = "silu",
        hidden_size: int = 512,
        intermediate_size: Optional[int] = None,
        max_position_embeddings: int = 32768,
        num_attention_heads: int = 8,
        num_hidden_layers: int = 8,
        num_key_value_heads: int = 2,
        head_dim: Optional[int] = None,
        qk_norm: Optional[bool] = None,
        vocab_size: int = 6400,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 1e6,
        inference_rope_scaling: bool = False,
        flash_attn: bool = True,
        # --- MoE ---
        use_moe: bool = False,
        num_experts_per_tok: int = 2,
        n_routed_experts: int = 4,
        n_shared_experts: Optional[int] = None,
        moe_intermediate_size: Optional[int] = None,
        aux_loss_type: Optional[str] = None,
        aux_loss_alpha: float = 0.1,
        seq_aux: bool = True,
        norm_topk_prob: bool = True,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        # Upstream minimind-3 spellings (its config.json). Our own saved configs always carry `qk_norm`, so a config
        # with `router_aux_loss_coef` and no `qk_norm` was written by upstream's minimind-3 code.
        upstream3 = qk_norm is None and "router_aux_loss_coef" in kwargs
        if "num_experts" in kwargs:
            n_routed_experts = kwargs.pop("num_experts")
        if "router_aux_loss_coef" in kwargs:
            aux_loss_alpha = kwargs.pop("router_aux_loss_coef")
        # MiniMind2 configs carry `scoring_func`; softmax is the only router there is, so it is not a field.
        scoring_func = kwargs.pop("scoring_func", "softmax")
        if scoring_func != "softmax":
            raise ValueError(f"unsupported MoE scoring_func {scoring_func!r} (only 'softmax')")
        if qk_norm is None:
            qk_norm = upstream3
        if n_shared_experts is None:
            n_shared_experts = 0 if upstream3 else 1
        if aux_loss_type is None:
            aux_loss_type = "switch" if upstream3 else ("seq" if seq_aux else "batch")

        self.dropout = dropout
        self.hidden_act = hidden_act
        self.hidden_size = hidden_size
        # MiniMind2's rule: 8/3 * hidden, rounded up to a multiple of 64 (SwiGLU keeps the MLP's FLOPs ~ 4h^2 * 2).
        # minimind-3 presets pass theirs explicitly (`minimind3_intermediate_size`).
        if intermediate_size is None:
            intermediate_size = 64 * math.ceil(hidden_size * 8 / 3 / 64)
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        if head_dim is None:
            if hidden_size % num_attention_heads:
                raise ValueError(f"hidden_size {hidden_size} must be divisible by num_attention_heads "
                                 f"{num_attention_heads} (or give head_dim explicitly)")
            head_dim = hidden_size // num_attention_heads
        self.head_dim = head_dim
        self.qk_norm = bool(qk_norm)
        self.vocab_size = vocab_size
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        # Upstream configs store the YaRN dict as `rope_scaling`; transformers 5 reinterprets that name
        # (`rope_parameters`), so we keep only the switch and derive the dict (see `yarn_scaling`).
        rope_scaling = kwargs.pop("rope_scaling", None)
        if isinstance(rope_scaling, dict) and rope_scaling.get("type", rope_scaling.get("rope_type")) == "yarn":
            inference_rope_scaling = True
        # upstream minimind-3 writes `rope_parameters: null`; a YaRN dict there means the same as above.
        rope_parameters = kwargs.pop("rope_parameters", None)
        if isinstance(rope_parameters, dict) and rope_parameters.get("rope_type") == "yarn":
            inference_rope_scaling = True
        self.inference_rope_scaling = inference_rope_scaling
        self.flash_attn = flash_attn
        self.use_moe = use_moe
        self.num_experts_per_tok = num_experts_per_tok
        self.n_routed_experts = n_routed_experts
        self.n_shared_experts = n_shared_experts
        self.moe_intermediate_size = moe_intermediate_size if moe_intermediate_size is not None else intermediate_size
        if aux_loss_type not in AUX_LOSS_TYPES:
            raise ValueError(f"aux_loss_type {aux_loss_type!r} is not one of {AUX_LOSS_TYPES}")
        self.aux_loss_type = aux_loss_type
        self.aux_loss_alpha = aux_loss_alpha
        self.seq_aux = aux_loss_type == "seq"  # MiniMind2's spelling, kept in saved configs
        self.norm_topk_prob = norm_topk_prob
        self.initializer_range = initializer_range
        if num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {num_attention_heads} must be a multiple of num_key_value_heads "
                             f"{self.num_key_value_heads}")
        if head_dim % 2:
            raise ValueError(f"head_dim {head_dim} must be even (RoPE rotates pairs of dimensions)")
        if use_moe and not 1 <= num_experts_per_tok <= n_routed_experts:
            raise ValueError(f"num_experts_per_tok {num_experts_per_tok} must be in 1..n_routed_experts "
                             f"({n_routed_experts})")
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MiniMindConfig":
        """A released shape (`PRESETS`), with any field overridden (`from_preset("minimind3", num_hidden_layers=4)`).

        minimind-3's intermediate size follows its own rule from the final hidden size unless given."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        kw = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
        if name.startswith("minimind3") and "intermediate_size" not in kw:
            kw["intermediate_size"] = minimind3_intermediate_size(kw["hidden_size"])
        return cls(**kw)

    @property
    def yarn_scaling(self) -> Optional[dict]:
        """The YaRN `rope_scaling` dict when `inference_rope_scaling` is on, else None."""
        return dict(YARN_ROPE_SCALING) if self.inference_rope_scaling else None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in fp32 for stability under bf16/fp16 autocast, then cast back (as Llama does).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.type_as(x)


# ----------------------------------------------------------------------------------------------------------------
# Rotary position embedding
# ----------------------------------------------------------------------------------------------------------------
def rope_inv_freq(dim: int, base: float, rope_scaling: Optional[dict] = None, end: Optional[int] = None):
    """Inverse frequencies theta_i = base^(-2i/dim), optionally YaRN-scaled; returns (inv_freq, attention_factor).

    YaRN ("NTK-by-parts"): with r_i = L_orig / wavelength_i the number of rotations a dimension makes in the
    original context, dimensions that rotate many times (r > beta_fast) keep their frequency (extrapolate),
    dimensions that rotate less than beta_slow times are divided by `factor` (interpolate), and a linear ramp
    in between blends the two: f'_i = f_i * ((1 - gamma_i) + gamma_i / factor).
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    attn_factor = 1.0
    if rope_scaling is not None:
        orig_max = rope_scaling.get("original_max_position_embeddings", 2048)
        factor = rope_scaling.get("factor", 4)
        beta_fast = rope_scaling.get("beta_fast", 32.0)
        beta_slow = rope_scaling.get("beta_slow", 1.0)
        attn_factor = rope_scaling.get("attention_factor", 1.0)
        if end is None or end / orig_max > 1.0:
            # Dimension index at which a frequency makes `n_rot` full rotations over the original context.
            def correction_dim(n_rot):
                return (dim * math.log(orig_max / (n_rot * 2 * math.pi))) / (2 * math.log(base))

            low = max(math.floor(correction_dim(beta_fast)), 0)
            high = min(math.ceil(correction_dim(beta_slow)), dim // 2 - 1)
            ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 0.001), 0, 1)
            inv_freq = inv_freq * (1 - ramp + ramp / factor)
    return inv_freq, attn_factor


def precompute_freqs_cis(dim: int, end: int = 32 * 1024, rope_base: float = 1e6, rope_scaling: Optional[dict] = None):
    """cos/sin tables of shape (end, dim), laid out for HF-style `rotate_half` (the two halves repeat)."""
    inv_freq, attn_factor = rope_inv_freq(dim, rope_base, rope_scaling, end)
    t = torch.arange(end, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos() * attn_factor, emb.sin() * attn_factor


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    """q, k: (B, heads, T, D); cos, sin: (B, T, D)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed.to(q.dtype), k_embed.to(k.dtype)


class MiniMindRotaryEmbedding(nn.Module):
    """Holds the cos/sin tables as *non-persistent* buffers: they never enter the state dict (MiniMind2 keys),
    and `_init_weights` recomputes them whenever transformers materialises the model from the meta device."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        cos, sin = self.compute(config)
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)

    @staticmethod
    def compute(config: MiniMindConfig):
        return precompute_freqs_cis(config.head_dim, config.max_position_embeddings, config.rope_theta,
                                    config.yarn_scaling)

    @torch.no_grad()
    def reset_parameters(self):
        cos, sin = self.compute(self.config)
        if self.freqs_cos.is_meta:
            self.freqs_cos, self.freqs_sin = cos, sin
        else:
            self.freqs_cos.copy_(cos)
            self.freqs_sin.copy_(sin)

    def forward(self, position_ids):
        # position_ids: (B, T) -> gathered (B, T, D). A gather (not a slice by a Python int taken from a tensor)
        # keeps decoding free of host syncs and supports per-row positions (left padding, packed documents).
        return self.freqs_cos[position_ids], self.freqs_sin[position_ids]


# ----------------------------------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------------------------------
class StaticKVCache:
    """A preallocated KV cache: `update` writes into fixed buffers instead of `torch.cat` per token.

    It follows the small part of transformers' `Cache` interface the model uses (`update`, `get_seq_length`),
    so our own decoders (eval, serving, RL rollouts) use it, while `generate()` may pass transformers'
    DynamicCache instead. Layout per layer: (B, kv_heads, max_len, head_dim), like transformers.
    """

    is_compileable = False

    def __init__(self, config: MiniMindConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len
        self.seen = 0  # tokens already stored (same for every layer once a forward completes)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def update(self, key, value, layer_idx: int, cache_kwargs=None):
        start, n = self.seen, key.shape[2]
        assert start + n <= self.max_len, f"StaticKVCache overflow: {start}+{n} > max_len {self.max_len}"
        self.k[layer_idx][:, :, start:start + n] = key
        self.v[layer_idx][:, :, start:start + n] = value
        if layer_idx == len(self.k) - 1:
            self.seen = start + n
        return self.k[layer_idx][:, :, :start + n], self.v[layer_idx][:, :, :start + n]

    def reorder(self, keep: torch.Tensor):
        """Keep only the batch rows in `keep` (used when finished sequences leave a batch)."""
        self.k = [t[keep] for t in self.k]
        self.v = [t[keep] for t in self.v]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, kv_heads, T, D) -> (B, kv_heads * n_rep, T, D) for grouped-query attention."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def build_attention_mask(attention_mask, q_len: int, kv_len: int, device):
    """Boolean mask (B, 1, q_len, kv_len), True = attend; None when plain causal attention suffices.

    `attention_mask` is the usual (B, kv_len) 0/1 padding mask, or an already-built 4D mask (passed through).
    The i-th query sits at absolute position kv_len - q_len + i, so it sees keys 0..that position.
    """
    if BlockMask is not None and isinstance(attention_mask, BlockMask):
        return attention_mask  # packed documents, flex_attention (see doc_block_mask in dataset/lm_dataset.py)
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask.bool()
    if attention_mask is None and q_len == kv_len:
        return None  # SDPA's is_causal fast path
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)
    k_pos = torch.arange(kv_len, device=device)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]  # (1, 1, q, kv)
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :kv_len].bool()
        # A left-padding query row would see no key at all (softmax of nothing = NaN); let it see itself.
        # Its output is never used (labels/mask are 0 there), this only keeps the numbers finite.
        mask = mask | (k_pos[None, :] == q_pos[:, None])[None, None]
    return mask


_FLEX_COMPILED = None


def flex_attention_kernel(device):
    """flex_attention, compiled on GPUs (eager flex_attention materialises the scores: slow, for checking only);
    eager on the CPU, where it serves the tests and small runs."""
    global _FLEX_COMPILED
    if torch.device(device).type == "cpu":
        return flex_attention
    if _FLEX_COMPILED is None:
        _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED


class Attention(nn.Module):
    def __init__(self, config: MiniMindConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.n_rep = self.n_heads // self.n_kv_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)
        # minimind-3 / Qwen3 "QK-norm": an RMSNorm over each head's vector of q and k, before RoPE. The size of the
        # attention logits then depends on the two norm weights, not on how large W_q / W_k have grown, which keeps
        # the softmax from saturating during training.
        self.qk_norm = config.qk_norm
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.flash = config.flash_attn

    def forward(self, x, position_embeddings, cache=None, attention_mask=None):
        bsz, seq_len, _ = x.shape
        q = self.q_proj(x).view(bsz, seq_len, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        kv_len = k.shape[2]
        dropout_p = self.dropout if self.training else 0.0
        if seq_len == 1 and self.flash and self.n_rep > 1:
            # Decoding, one query per row: the n_rep query heads that share a KV head attend as n_rep queries of
            # that head, so the cache is read where it lies instead of being copied n_rep times by repeat_kv
            # (which, at batch 16 and a few hundred tokens of context, copies more bytes per step than the
            # weights hold). A padding mask (B, 1, 1, kv) broadcasts over both.
            q = q.reshape(bsz, self.n_kv_heads, self.n_rep, self.head_dim)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout_p)
            return self.resid_dropout(self.o_proj(out.reshape(bsz, 1, -1)))
        k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)
        if BlockMask is not None and isinstance(attention_mask, BlockMask):
            # Block-diagonal causal attention over packed documents: flex_attention skips the fully masked
            # 128x128 tiles instead of computing and masking a dense (T x T) score matrix.
            assert dropout_p == 0.0, "flex_attention has no attention dropout: train with dropout 0 or the SDPA mask"
            out = flex_attention_kernel(q.device)(q, k, v, block_mask=attention_mask)
        elif self.flash:
            if attention_mask is None:
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=seq_len > 1)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout_p)
        else:  # the textbook computation, kept for reading and for checking SDPA
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if attention_mask is None and seq_len > 1:
                attention_mask = torch.ones(seq_len, kv_len, device=x.device, dtype=torch.bool).tril(kv_len - seq_len)
            if attention_mask is not None:
                scores = scores.masked_fill(~attention_mask, float("-inf"))
            scores = self.attn_dropout(F.softmax(scores.float(), dim=-1).type_as(q))
            out = scores @ v
        out = out.transpose(1, 2).reshape(bsz, seq_len, -1)
        return self.resid_dropout(self.o_proj(out))


class FeedForward(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, config: MiniMindConfig, intermediate_size: Optional[int] = None):
        super().__init__()
        inter = intermediate_size or config.intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, inter, bias=False)
        self.down_proj = nn.Linear(inter, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, inter, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.act_fn = transformers.activations.ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.dropout(self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)))


# ----------------------------------------------------------------------------------------------------------------
# Mixture of experts
# ----------------------------------------------------------------------------------------------------------------
class MoEGate(nn.Module):
    """Softmax router with top-k selection and a load-balancing auxiliary loss.

    The aux loss (`config.aux_loss_type`) is MiniMind2's DeepSeek-style one ("seq": per sequence, "batch": over the
    batch) or minimind-3's Switch-Transformer one ("switch"), times `aux_loss_alpha`."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.n_routed_experts
        self.alpha = config.aux_loss_alpha
        self.aux_loss_type = config.aux_loss_type
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.empty((self.n_routed_experts, config.hidden_size)))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, hidden_states):
        bsz, seq_len, h = hidden_states.shape
        x = hidden_states.reshape(-1, h)
        scores = F.linear(x, self.weight).softmax(dim=-1)  # (N, E)
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        if self.norm_topk_prob:
            # The chosen experts' weights sum to 1 (as in Qwen3-MoE and llama.cpp's qwen3moe). With top-1 every
            # weight is 1: the router then learns from the aux loss only, exactly as upstream minimind-3 does.
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)

        aux_loss = scores.new_zeros(())
        if self.training and self.alpha > 0.0:
            # Penalise routers that send most tokens to few experts: sum_e f_e * P_e, where f_e is the
            # (normalised) fraction of routing slots that chose expert e and P_e its mean router probability.
            if self.aux_loss_type == "switch":
                # Switch Transformer (minimind-3): E * sum_e f_e * P_e over all tokens of the batch, f_e the
                # fraction of tokens that chose e, counted once per top-k slot (= 1 when balanced, for top-1).
                load = F.one_hot(topk_idx, self.n_routed_experts).to(scores.dtype).mean(0)  # (k, E)
                aux_loss = (load * scores.mean(0)).sum() * self.n_routed_experts * self.alpha
            elif self.aux_loss_type == "seq":  # DeepSeek-style, per sequence, then averaged
                idx = topk_idx.view(bsz, -1)
                ce = torch.zeros(bsz, self.n_routed_experts, device=x.device, dtype=scores.dtype)
                ce.scatter_add_(1, idx, torch.ones_like(idx, dtype=scores.dtype))
                ce = ce / (seq_len * self.top_k / self.n_routed_experts)
                aux_loss = (ce * scores.view(bsz, seq_len, -1).mean(dim=1)).sum(dim=1).mean() * self.alpha
            else:  # over the whole batch
                fi = F.one_hot(topk_idx.view(-1), self.n_routed_experts).to(scores.dtype).mean(0)
                aux_loss = (scores.mean(0) * fi * self.n_routed_experts).sum() * self.alpha
        return topk_idx, topk_weight, aux_loss


class MOEFeedForward(nn.Module):
    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        inter = config.moe_intermediate_size
        self.experts = nn.ModuleList([FeedForward(config, inter) for _ in range(config.n_routed_experts)])
        self.gate = MoEGate(config)
        if config.n_shared_experts > 0:  # MiniMind2: one always-on expert beside the routed ones; minimind-3: none
            self.shared_experts = nn.ModuleList([FeedForward(config, inter) for _ in range(config.n_shared_experts)])
        self.aux_loss = None

    def forward(self, x):
        identity = x
        orig_shape = x.shape
        topk_idx, topk_weight, aux_loss = self.gate(x)
        flat = x.reshape(-1, x.shape[-1])
        y = self.dispatch(flat, topk_idx, topk_weight).view(orig_shape)
        if self.config.n_shared_experts > 0:
            for expert in self.shared_experts:
                y = y + expert(identity)
        self.aux_loss = aux_loss
        return y

    def dispatch(self, x, topk_idx, topk_weight):
        """Vectorised routing: sort the (token, slot) pairs by expert, run each expert once on its contiguous
        slice, and scatter-add the weighted outputs back. Same result as looping over tokens, no per-expert
        boolean masks over the whole batch."""
        n_tokens, k = topk_idx.shape
        flat_expert = topk_idx.reshape(-1)
        order = flat_expert.argsort(stable=True)
        token_of_slot = order // k
        counts = torch.bincount(flat_expert, minlength=len(self.experts)).tolist()
        gathered = x[token_of_slot]
        weights = topk_weight.reshape(-1)[order].unsqueeze(-1)
        out = torch.zeros_like(x)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                if self.training:  # keep every expert in the graph so DDP sees a gradient for each parameter
                    out = out + 0.0 * sum(p.sum() for p in self.experts[e].parameters()).to(out.dtype)
                continue
            end = start + n
            expert_out = self.experts[e](gathered[start:end]) * weights[start:end].to(x.dtype)
            out.index_add_(0, token_of_slot[start:end], expert_out.to(out.dtype))
            start = end
        return out


class MiniMindBlock(nn.Module):
    def __init__(self, layer_id: int, config: MiniMindConfig):
        super().__init__()
        self.self_attn = Attention(config, layer_idx=layer_id)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = FeedForward(config) if not config.use_moe else MOEFeedForward(config)

    def forward(self, hidden_states, position_embeddings, cache=None, attention_mask=None):
        h = hidden_states + self.self_attn(self.input_layernorm(hidden_states), position_embeddings,
                                           cache, attention_mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class MiniMindPreTrainedModel(PreTrainedModel):
    config_class = MiniMindConfig
    base_model_prefix = "model"
    _no_split_modules = ["MiniMindBlock"]
    _supports_cache_class = True
    _supports_static_cache = False

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, MoEGate):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        elif isinstance(module, MiniMindRotaryEmbedding):
            # Recomputed from the config, never "if it looks empty": after a meta-device init its contents are
            # undefined, and a zero check would miss garbage.
            module.reset_parameters()


class MiniMindModel(MiniMindPreTrainedModel):
    def __init__(self, config: MiniMindConfig):
        super().__init__(config)
        self.vocab_size, self.num_hidden_layers = config.vocab_size, config.num_hidden_layers
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([MiniMindBlock(i, config) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = MiniMindRotaryEmbedding(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                use_cache: bool = False, inputs_embeds=None, past_key_values=None, **kwargs):
        cache = pick_cache(cache, past_key_values)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        bsz, seq_len = inputs_embeds.shape[:2]
        if use_cache and cache is None:
            from transformers import DynamicCache
            cache = DynamicCache()
        past_len = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + seq_len, device=inputs_embeds.device)
            position_ids = position_ids.unsqueeze(0).expand(bsz, -1)
        position_embeddings = self.rotary_emb(position_ids)
        position_embeddings = tuple(p.to(inputs_embeds.dtype) for p in position_embeddings)

        # A given padding mask is always applied. Callers without padding pass None themselves (model/generation.py,
        # the trainers), so SDPA keeps its causal fast path without a host sync here to test for an all-ones mask.
        mask = None
        if attention_mask is not None:
            mask = build_attention_mask(attention_mask, seq_len, past_len + seq_len, inputs_embeds.device)
        elif seq_len > 1 and past_len > 0:  # chunked prefill against a cache: causal with an offset
            mask = build_attention_mask(None, seq_len, past_len + seq_len, inputs_embeds.device)

        hidden_states = self.dropout(inputs_embeds)
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_embeddings, cache, mask)
        hidden_states = self.norm(hidden_states)
        aux_loss = sum((l.mlp.aux_loss for l in self.layers if isinstance(l.mlp, MOEFeedForward)),
                       hidden_states.new_zeros(()))
        return hidden_states, cache if use_cache or cache is not None else None, aux_loss


class MiniMindForCausalLM(MiniMindPreTrainedModel, GenerationMixin):
    # transformers 5 wants {tied: source}; 4.x wants a list of tied keys.
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"} if TRANSFORMERS_V5 else ["lm_head.weight"]

    def __init__(self, config: Optional[MiniMindConfig] = None):
        config = config or MiniMindConfig()
        super().__init__(config)
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Tie explicitly as well, so a plain `MiniMindForCausalLM(cfg)` shares the matrix on every version.
        self.lm_head.weight = self.model.embed_tokens.weight
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                use_cache: bool = False, labels=None, logits_to_keep=0, inputs_embeds=None, past_key_values=None,
                labelled_only: bool = False, **kwargs):
        # `cache` / `past_key_values`: a transformers Cache or our StaticKVCache, under either name (see CACHE_FIELD)
        hidden_states, cache, aux_loss = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=pick_cache(cache, past_key_values), use_cache=use_cache, inputs_embeds=inputs_embeds)
        if labels is not None and labelled_only:
            # Chat SFT scores only the assistant's tokens: system, user and tool turns (often 50-80% of a row) need
            # no logits. In a small model the (T x vocab) head is a large share of the compute (half of it at hidden
            # 128, vocab 6400), so project and score only the labelled positions. Same loss, same gradients;
            # out.logits is None. Boolean indexing has a data-dependent shape: callers skip it under torch.compile.
            keep = labels[:, 1:] != -100
            logits = self.lm_head(hidden_states[:, :-1][keep])
            loss = F.cross_entropy(logits.float(), labels[:, 1:][keep], reduction="sum") / keep.sum().clamp(min=1)
            return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux_loss, logits=None, **{CACHE_FIELD: cache})
        # Only the last `logits_to_keep` positions need logits when generating: skips a (T x vocab) matmul.
        sl = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, sl, :])
        loss = None
        if labels is not None:
            # Next-token prediction: position t predicts token t+1; -100 marks positions without a target.
            # Mean over labelled positions; a batch with none (e.g. truncated away) gives 0, not NaN.
            targets = labels[:, 1:].reshape(-1)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), targets,
                                   ignore_index=-100, reduction="sum") / (targets != -100).sum().clamp(min=1)
        return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux_loss, logits=logits, **{CACHE_FIELD: cache})


MiniMindConfig.register_for_auto_class()
MiniMindForCausalLM.register_for_auto_class("AutoModelForCausalLM")
