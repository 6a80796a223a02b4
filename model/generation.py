"""Fast sampling for MiniMind: batched, left-padded, with a preallocated KV cache.

Used by every place that generates text — terminal chat (eval_llm.py), the OpenAI-compatible server, the
web demo, RL rollouts and benchmarks — so decoding is written once.

Why not only `model.generate()`? It works (and is tested), but this loop keeps a preallocated cache
(`StaticKVCache`: no `torch.cat` per token), computes logits for the last position only, yields tokens
as they come (streaming) and can return the sampled tokens' log-probs and a response mask for RL.
"""
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F

from model.model_minimind import StaticKVCache


@dataclass
class GenerationOutput:
    sequences: torch.Tensor       # (B, P + N): left-padded prompts followed by the responses
    attention_mask: torch.Tensor  # (B, P + N): 1 for real prompt tokens and generated tokens up to EOS
    response_mask: torch.Tensor   # (B, N): 1 for generated tokens up to and including EOS
    prompt_len: int               # P, the padded prompt length
    logprobs: Optional[torch.Tensor] = None  # (B, N) log p(token) under the sampling distribution

    @property
    def responses(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_len:]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device=None):
    """List of token lists -> (ids, attention_mask), padded on the left so every prompt ends at the same column
    and the next token of every row is generated at the same step."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def process_logits(logits, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seen=None):
    """Logits of the next token (B, V) -> logits to sample from (filtered positions are -inf)."""
    logits = logits.float()
    if repetition_penalty != 1.0 and seen is not None:
        # CTRL-style penalty (as in transformers): shrink the logits of tokens already in the sequence.
        prev = logits.gather(1, seen)
        logits = logits.scatter(1, seen, torch.where(prev > 0, prev / repetition_penalty, prev * repetition_penalty))
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    if top_k and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1.0:
        # Nucleus: keep the smallest set of tokens whose probability reaches top_p (the top token always stays).
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p
        logits = logits.masked_fill(drop.scatter(1, sorted_idx, drop), float("-inf"))
    return logits


@torch.inference_mode()
def decode_steps(model, prompts: Sequence[Sequence[int]], max_new_tokens: int = 256, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0, eos_token_id: int = 2,
                 pad_token_id: int = 0, generator: Optional[torch.Generator] = None,
                 max_total_len: Optional[int] = None) -> Iterator[tuple]:
    """Yield (next_tokens (B,), logprobs (B,), finished (B,) before this step) once per generated position.

    `temperature == 0` means greedy. Rows that finished keep emitting `pad_token_id` until all are done.
    """
    device = next(model.parameters()).device
    config = model.config
    ids, mask = left_pad(prompts, pad_token_id, device)
    bsz, plen = ids.shape
    limit = max_total_len or config.max_position_embeddings
    max_new_tokens = max(0, min(max_new_tokens, limit - plen))
    if max_new_tokens == 0:
        return
    dtype = next(model.parameters()).dtype
    cache = StaticKVCache(config, bsz, plen + max_new_tokens, device=device, dtype=dtype)
    padded = bool((mask == 0).any())  # one host sync, before the loop
    # Positions count real tokens only, so a left-padded prompt sees the same positions as an unpadded one.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask if padded else None, position_ids=positions,
                cache=cache, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1]
    next_pos = positions[:, -1:] + 1
    seen = ids if repetition_penalty != 1.0 else None
    finished = torch.zeros(bsz, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        filtered = process_logits(logits, temperature, top_p, top_k, repetition_penalty, seen)
        if temperature > 0:
            probs = filtered.softmax(-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            tok = filtered.argmax(-1)
        logprob = F.log_softmax(filtered, -1).gather(1, tok[:, None]).squeeze(1)
        tok = torch.where(finished, torch.full_like(tok, pad_token_id), tok)
        yield tok, logprob, finished.clone()
        finished = finished | (tok == eos_token_id)
        if step == max_new_tokens - 1 or bool(finished.all()):
            return
        if seen is not None:
            seen = torch.cat([seen, tok[:, None]], 1)
        mask = torch.cat([mask, mask.new_ones(bsz, 1)], 1) if padded else mask
        out = model(input_ids=tok[:, None], attention_mask=mask if padded else None, position_ids=next_pos,
                    cache=cache, use_cache=True)
        logits = out.logits[:, -1]
        next_pos = next_pos + 1


def generate(model, prompts: Sequence[Sequence[int]], **kwargs) -> GenerationOutput:
    """Batched sampling; see `decode_steps` for the arguments."""
    device = next(model.parameters()).device
    pad_id = kwargs.get("pad_token_id", 0)
    ids, mask = left_pad(prompts, pad_id, device)
    toks, lps, alive = [], [], []
    for tok, lp, finished in decode_steps(model, prompts, **kwargs):
        toks.append(tok)
        lps.append(lp)
        alive.append(~finished)
    if toks:
        resp = torch.stack(toks, 1)
        resp_mask = torch.stack(alive, 1).long()
        logprobs = torch.stack(lps, 1) * resp_mask
    else:
        resp = ids.new_zeros((ids.shape[0], 0))
        resp_mask, logprobs = resp.clone(), resp.float()
    return GenerationOutput(sequences=torch.cat([ids, resp], 1), attention_mask=torch.cat([mask, resp_mask], 1),
                            response_mask=resp_mask, prompt_len=ids.shape[1], logprobs=logprobs)


def stream_generate(model, prompt: Sequence[int], **kwargs) -> Iterator[int]:
    """Yield the generated token ids of one prompt as they are produced (stops after EOS)."""
    eos = kwargs.get("eos_token_id", 2)
    for tok, _, finished in decode_steps(model, [prompt], **kwargs):
        if bool(finished[0]):
            return
        t = int(tok[0])
        yield t
        if t == eos:
            return


def batch_texts(tokenizer, texts: List[str]) -> List[List[int]]:
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
