"""The one decoding engine: batched, KV-cached sampling with streaming, for every place that generates text.

Terminal chat (eval_llm.py), the web demo, the OpenAI-compatible server, RL rollouts and the benchmarks all
decode through `BatchDecoder`, so a fix to sampling or caching is made once.

    BatchDecoder(model, stop_token_ids, pad_token_id)   a running batch over one preallocated KV cache
        .admit(prompts, sampling, max_new_tokens)       prefill new rows (they may join a running batch)
        .sample()                                       the next token of every row (one tensor, no host sync)
        .keep(rows)                                     rows that go on; the others leave the batch
        .advance(tokens, suffixes, budgets)             feed the sampled tokens: one batched forward; rows given a
                                                        suffix (a tool result) also get it, and a new turn
    decode_steps(model, prompts, ...)                   that loop for a fixed set of prompts: yields per step
    generate(model, prompts, ...) -> GenerationOutput   whole responses (+ log-probs and masks for RL)
    stream_generate(model, prompt, ...)                 one prompt's token ids as they come
    stream_tokens(model, prompt, ...)                   the same for any causal LM: MiniMind through this
                                                        engine, other transformers models through their own
                                                        generate() with a streamer
    IncrementalDecoder, StopMatcher                     token ids -> printable text; OpenAI `stop` strings

Why not only `model.generate()`? It works (and is tested), but this loop keeps a preallocated cache
(`StaticKVCache`: no `torch.cat` per token), computes logits for the last position only, lets requests join and
leave a running batch (the server's continuous batching), and returns the sampled tokens' log-probs and a
response mask for RL.
"""
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Union

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


# ================================================================================================================
# The engine
# ================================================================================================================
@dataclass(frozen=True)
class Sampling:
    """How a row picks its next token. temperature 0 = greedy. Rows with equal settings (the same `generator`
    object included) are drawn in one call; a seeded server request has a generator of its own, so it is drawn
    alone and its tokens do not depend on what else is in the batch. `ignore_eos`: the stop tokens are never
    sampled (a fixed-length answer, as vLLM's option of that name)."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    generator: Optional[torch.Generator] = None
    ignore_eos: bool = False

    def draw(self, logits, seen=None, logprobs=False):
        """Logits (n, V) -> (tokens (n,), log p(token) under the filtered distribution (n,) or None)."""
        if self.temperature == 0 and self.repetition_penalty == 1.0 and not logprobs:
            return logits.argmax(-1), None  # top-p / top-k filtering never changes the argmax
        filtered = process_logits(logits, self.temperature, self.top_p, self.top_k, self.repetition_penalty, seen)
        if self.temperature > 0:
            tok = torch.multinomial(filtered.softmax(-1), 1, generator=self.generator).squeeze(1)
        else:
            tok = filtered.argmax(-1)
        lp = F.log_softmax(filtered, -1).gather(1, tok[:, None]).squeeze(1) if logprobs else None
        return tok, lp


@dataclass(eq=False)
class Row:
    """One sequence in a BatchDecoder. `tag` is the caller's (the server keeps its job there)."""
    prompt_len: int     # tokens before this turn: the prompt, or the whole context when advance() began a turn
    max_new_tokens: int
    sampling: Sampling
    tag: Any = None
    generated: int = 0  # tokens sampled so far
    pad: int = 0        # padding columns in front of it in the shared cache


class BatchDecoder:
    """A batch of sequences decoded together over one preallocated KV cache; rows may join and leave between steps.

    State between steps (B rows, in `self.rows` order):
        cache   StaticKVCache (B, kv_heads, capacity, head_dim); columns [0, cache.seen) are used. Rows are
                right-aligned: row i's tokens fill columns [rows[i].pad, cache.seen), padding is in front.
        pads    (B, 1) the rows' padding widths on the device (the attention mask is `column >= pad`), or None
                when no row has padding (then attention takes SDPA's plain causal path)
        pos     (B, 1) the position id of each row's next token (real tokens only, so padding shifts nothing)
        logits  (B, vocab) each row's next-token logits (fp32)
        seen    (B, L) each row's tokens so far, for the repetition penalty (None when no row uses one)
    One step: `tok, _ = sample()`, look at the tokens, `keep(rows that go on)`, `advance(tok[kept])`. A row whose
    turn ended may go on with a suffix instead of leaving: `advance(tok[kept], suffixes, budgets)` appends the
    suffix to its cache (multi-turn tool use, without prefilling its whole context again).
    Nothing here reads a value back from the device; the caller chooses when to (once per step at most).

    stop_token_ids: what `is_stop` tests for (EOS and friends).
    chunk: None = allocate the cache for every row's whole budget at once (a fixed batch: generate());
        n = allocate at most max(n, current width) columns ahead and grow later (amortised doubling), so a
        server request without max_tokens does not reserve the whole context.
    """

    def __init__(self, model, stop_token_ids: Union[int, Sequence[int]] = 2, pad_token_id: int = 0,
                 chunk: Optional[int] = None):
        self.model, self.config = model, model.config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        ids = [stop_token_ids] if isinstance(stop_token_ids, int) else list(stop_token_ids)
        self.stop_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        self.ban_ids = torch.tensor([i for i in ids if i >= 0], dtype=torch.long, device=self.device)  # -1 = none
        self.pad_id, self.chunk = pad_token_id, chunk
        self.rows: List[Row] = []
        self.cache = self.pads = self.pos = self.logits = self.seen = None
        self.groups = []  # [(Sampling, row index tensor or None for all rows)], rebuilt when rows change
        self.ban = []     # rows whose Sampling has ignore_eos
        self.grows = 0    # cache reallocations (chunked mode)

    def __len__(self):
        return len(self.rows)

    # ------------------------------------------------------------------ rows in and out
    @torch.inference_mode()
    def admit(self, prompts: Sequence[Sequence[int]], sampling: Union[Sampling, Sequence[Sampling]] = Sampling(),
              max_new_tokens: Union[int, Sequence[int]] = 256, tags: Optional[Sequence[Any]] = None):
        """Prefill `prompts` as one left-padded batch and add them to the rows. A running batch and the new rows
        are right-aligned to the wider of the two and their caches merged."""
        n = len(prompts)
        sampling = [sampling] * n if isinstance(sampling, Sampling) else list(sampling)
        budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        tags = [None] * n if tags is None else list(tags)
        ids, mask = left_pad(prompts, self.pad_id, self.device)
        width = ids.shape[1]
        new = [Row(len(p), b, s, t, pad=width - len(p)) for p, s, b, t in zip(prompts, sampling, budgets, tags)]
        direct = not self.rows  # nothing running: prefill straight into the full-size cache
        if direct:
            self.rows = new
        # Equal prompts (the G samples of one RL prompt) are prefilled once and their cache rows copied: the
        # prefill is most of a short rollout's compute, and a row's cache depends only on its own tokens.
        slot, prefilled = {}, []  # a prompt -> its row in the prefill; the prompt of each prefilled row
        for i, p in enumerate(prompts):
            if slot.setdefault(tuple(p), len(prefilled)) == len(prefilled):
                prefilled.append(i)
        m = len(prefilled)
        cache = StaticKVCache(self.config, m, width + self._room(width) if direct else width, device=self.device,
                              dtype=self.dtype)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        padded = any(len(p) < width for p in prompts)
        u = torch.tensor(prefilled, device=self.device) if m < n else slice(None)
        out = self.model(input_ids=ids[u], attention_mask=mask[u] if padded else None, position_ids=positions[u],
                         cache=cache, use_cache=True, logits_to_keep=1)
        logits, pos = out.logits[:, -1].float(), positions[:, -1:] + 1
        if m < n:  # each row takes its prompt's prefilled cache row and logits
            back = torch.tensor([slot[tuple(p)] for p in prompts], device=self.device)
            cache.reorder(back)
            logits = logits[back]
        seen = None
        if self.seen is not None or any(s.repetition_penalty != 1.0 for s in sampling):
            # Each row's tokens so far, for the repetition penalty. Padding repeats the row's first token, which is
            # in the row anyway, so the penalty counts nothing extra.
            first = ids[torch.arange(n, device=self.device), (mask == 0).sum(1).clamp(max=width - 1)]
            seen = torch.where(mask.bool(), ids, first[:, None])
        if direct:
            self.cache, self.pos, self.logits, self.seen = cache, pos, logits, seen
        else:
            self._merge(new, cache, width, pos, logits, seen)
        self._rows_changed()

    def _merge(self, rows: List[Row], cache: StaticKVCache, width: int, pos, logits, seen, at=None):
        """Join a sub-batch to the running batch in one new cache: `rows`, right-aligned in the first `width`
        columns of `cache`, with their next positions (n, 1), logits (n, V) and histories (n, width) or None.
        at=None appends the rows (admit); a list of indices puts them in place of the running rows there (advance
        with suffixes: the same Row objects, their order kept). Each row's `pad` must be its padding inside the
        sub-batch; here it becomes its padding in the joined cache."""
        b = len(self.rows)
        if at is None:
            running, self.rows = self.rows, self.rows + rows
            at = slice(b, b + len(rows))
        else:
            replaced = set(at)
            running = [r for i, r in enumerate(self.rows) if i not in replaced]
            at = torch.tensor(at, device=self.device)
        # Every row is right-aligned to the longest one: columns that are padding in every row of a part are left
        # out (after long rows left the batch, in front of a short sub-batch), else each new turn appended to one
        # row would widen the cache, and every later step's attention, for all rows.
        old_lo, new_lo = min((r.pad for r in running), default=self.cache.seen), min(r.pad for r in rows)
        old_width, width = self.cache.seen - old_lo, width - new_lo
        right = max(old_width, width)  # the common right edge after the merge
        for r in running:
            r.pad += right - old_width - old_lo
        for r in rows:
            r.pad += right - width - new_lo
        # Positions are per row (real tokens only), so the cache may be wider than the context limit: a short
        # prompt right-aligned next to a long one just has more padding columns in front of it.
        merged = StaticKVCache(self.config, len(self.rows), right + self._room(right), device=self.device,
                               dtype=self.dtype)
        for layer in range(len(merged.k)):
            for dst, old, add in ((merged.k[layer], self.cache.k[layer], cache.k[layer]),
                                  (merged.v[layer], self.cache.v[layer], cache.v[layer])):
                dst[:b, :, right - old_width:right] = old[:, :, old_lo:old_lo + old_width]  # replaced: overwritten
                dst[at, :, right - width:right] = add[:, :, new_lo:new_lo + width]
        merged.seen = right
        self.cache = merged
        appended = isinstance(at, slice)
        if appended:
            self.pos, self.logits = torch.cat([self.pos, pos]), torch.cat([self.logits, logits])
        else:
            self.pos[at], self.logits[at] = pos, logits
        if seen is not None:
            # Running rows without a history have no penalty, so its contents never matter for them.
            old = self.seen if self.seen is not None else torch.full((b, 1), self.pad_id, device=self.device)
            old, seen = _right_align(old, right), _right_align(seen, right)
            if appended:
                self.seen = torch.cat([old, seen])
            else:
                old[at] = seen
                self.seen = old

    @torch.inference_mode()
    def keep(self, rows: Sequence[int]):
        """Keep only `rows` (indices into self.rows, in order); the others leave the batch."""
        if len(rows) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in rows]
        if not self.rows:
            self.cache = self.pos = self.logits = self.seen = None
            return self._rows_changed()
        idx = torch.tensor(list(rows), device=self.device)
        self.cache.reorder(idx)
        self.pos, self.logits = self.pos[idx], self.logits[idx]
        if self.seen is not None:
            self.seen = self.seen[idx]
        self._rows_changed()

    def _rows_changed(self):
        """Rebuild what depends on the set of rows: the padding widths and the sampling groups."""
        pads = [r.pad for r in self.rows]
        self.pads = torch.tensor(pads, device=self.device)[:, None] if any(pads) else None
        groups = {}
        for i, r in enumerate(self.rows):
            groups.setdefault(r.sampling, []).append(i)
        self.groups = [(s, None if len(ix) == len(self.rows) else torch.tensor(ix, device=self.device))
                       for s, ix in groups.items()]
        self.ban = [i for i, r in enumerate(self.rows) if r.sampling.ignore_eos]

    def _room(self, width: int) -> int:
        """Cache columns to allocate beyond `width`: what the rows may still need (capped at a chunk)."""
        need = max(1, max(r.max_new_tokens - r.generated for r in self.rows))
        return need if self.chunk is None else max(1, min(need, max(self.chunk, width)))

    def _grow(self):
        """Reallocate the cache with more columns (the used ones copied)."""
        seen = self.cache.seen
        bigger = StaticKVCache(self.config, len(self.rows), seen + self._room(seen), device=self.device,
                               dtype=self.dtype)
        for layer in range(len(bigger.k)):
            bigger.k[layer][:, :, :seen] = self.cache.k[layer][:, :, :seen]
            bigger.v[layer][:, :, :seen] = self.cache.v[layer][:, :, :seen]
        bigger.seen = seen
        self.cache = bigger
        self.grows += 1

    # ------------------------------------------------------------------ one step
    @torch.inference_mode()
    def sample(self, logprobs: bool = False):
        """Next token of every row -> (tokens (B,), log-probs (B,) or None). Rows with the same Sampling are drawn
        together: one call for a whole generate() batch."""
        logits = self.logits
        if self.ban and len(self.ban_ids):
            logits = logits.clone()
            logits[torch.tensor(self.ban, device=self.device)[:, None], self.ban_ids[None]] = float("-inf")
        for r in self.rows:
            r.generated += 1
        if len(self.groups) == 1:
            return self.groups[0][0].draw(logits, self.seen, logprobs)
        tok = torch.empty(len(self.rows), dtype=torch.long, device=self.device)
        lp = torch.empty(len(self.rows), device=self.device) if logprobs else None
        for s, ix in self.groups:
            t, l = s.draw(logits[ix], None if self.seen is None else self.seen[ix], logprobs)
            tok[ix] = t
            if logprobs:
                lp[ix] = l
        return tok, lp

    def is_stop(self, tok: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the token ends its row (a stop token)."""
        return (tok[:, None] == self.stop_ids[None]).any(1)

    @torch.inference_mode()
    def advance(self, tok: torch.Tensor, suffixes: Optional[Sequence[Optional[Sequence[int]]]] = None,
                budgets: Optional[Sequence[Optional[int]]] = None):
        """Append `tok` (one per row, after `keep`) to every row: one batched forward -> the next logits.

        suffixes: one entry per row, None for a row that just goes on, or token ids to append after its token (a
        new turn: the tool results and the next assistant header). Such a row starts a new turn as if its whole
        context had been admitted as a prompt, without recomputing that context: its logits become those after
        the suffix, `generated` restarts at 0 and `max_new_tokens` becomes budgets[i] (budgets None: unchanged).
        Its tag, sampling and place in `rows` stay."""
        if self.cache.seen + 1 > self.cache.max_len:
            self._grow()
        if self.seen is not None:
            self.seen = torch.cat([self.seen, tok[:, None]], 1)
        mask = None
        if self.pads is not None:  # padding columns (from prefill or a merge) must stay masked
            mask = torch.arange(self.cache.seen + 1, device=self.device)[None] >= self.pads
        out = self.model(input_ids=tok[:, None], attention_mask=mask, position_ids=self.pos, cache=self.cache,
                         use_cache=True)
        self.logits = out.logits[:, -1].float()
        self.pos = self.pos + 1
        if suffixes is not None and any(s is not None for s in suffixes):
            self._append(suffixes, budgets)

    def _append(self, suffixes, budgets):
        """advance()'s new turns, once every row has its token: prefill the suffixes of those rows as a sub-batch
        against a copy of their cache rows, then merge it back in their places."""
        turns = [i for i, s in enumerate(suffixes) if s is not None]
        for i in turns:
            r = self.rows[i]
            r.prompt_len += r.generated + len(suffixes[i])  # the context before the new turn, as admit counts it
            r.generated = 0
            if budgets is not None and budgets[i] is not None:
                r.max_new_tokens = budgets[i]
        rows = [i for i in turns if len(suffixes[i])]  # an empty suffix: a new budget, the logits are already right
        if not rows:
            return
        ix = torch.tensor(rows, device=self.device)
        ids, real = left_pad([suffixes[i] for i in rows], self.pad_id, self.device)
        lo = min(self.rows[i].pad for i in rows)  # columns that are padding in all these rows are left out
        n, old_width = len(rows), self.cache.seen - lo
        width = old_width + ids.shape[1]
        sub = StaticKVCache(self.config, n, width, device=self.device, dtype=self.dtype)
        for layer in range(len(sub.k)):
            sub.k[layer][:, :, :old_width] = self.cache.k[layer][ix, :, lo:lo + old_width]
            sub.v[layer][:, :, :old_width] = self.cache.v[layer][ix, :, lo:lo + old_width]
        sub.seen = old_width
        # Keys: the rows' own columns (their padding masked as in a step), then the suffixes' (left padding masked).
        old = torch.ones(n, old_width, dtype=torch.bool, device=self.device) if self.pads is None else \
            torch.arange(lo, lo + old_width, device=self.device)[None] >= self.pads[ix]
        positions = self.pos[ix] + (real.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=torch.cat([old, real.bool()], 1), position_ids=positions,
                         cache=sub, use_cache=True, logits_to_keep=1)
        logits, pos = out.logits[:, -1].float(), positions[:, -1:] + 1
        # A shorter suffix leaves a gap (its left padding) between the row's tokens and its suffix. Move the row's
        # tokens right over it, so that each row is contiguous and right-aligned again (what the mask
        # `column >= pad` needs). RoPE was applied before caching and attention does not care where a key sits
        # once masked right, so moving cached columns changes nothing. Column c takes column c - gap up to the
        # suffix (clamped at 0: new padding in front, masked) and itself from the suffix on.
        gap = (width - old_width) - real.sum(1, keepdim=True)
        col = torch.arange(width, device=self.device)[None]
        src = torch.where(col < old_width + gap, col - gap, col).clamp(min=0)  # (n, width)
        cols = src[:, None, :, None].expand(-1, sub.k[0].shape[1], -1, sub.k[0].shape[3])
        sub.k, sub.v = [k.gather(2, cols) for k in sub.k], [v.gather(2, cols) for v in sub.v]
        seen = None if self.seen is None else torch.cat([self.seen[ix, lo:], ids], 1).gather(1, src)  # same columns
        for i in rows:
            self.rows[i].pad += width - old_width - len(suffixes[i]) - lo
        self._merge([self.rows[i] for i in rows], sub, width, pos, logits, seen, at=rows)
        self._rows_changed()


def _right_align(t: torch.Tensor, width: int) -> torch.Tensor:
    """A history (B, L) as its last `width` columns: the first ones dropped (the caller knows they are padding in
    every row), or each row's first column repeated in front (a history padded by its own first token)."""
    n = width - t.shape[1]
    return torch.cat([t[:, :1].expand(-1, n), t], 1) if n > 0 else t[:, -n:]


# ================================================================================================================
# Fixed batches
# ================================================================================================================
@torch.inference_mode()
def decode_steps(model, prompts: Sequence[Sequence[int]], max_new_tokens: int = 256, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
                 eos_token_id: Union[int, Sequence[int]] = 2, pad_token_id: int = 0,
                 generator: Optional[torch.Generator] = None, max_total_len: Optional[int] = None,
                 logprobs: bool = True) -> Iterator[tuple]:
    """Yield (next_tokens (B,), logprobs (B,) or None, finished (B,) before this step) once per generated position.

    `temperature == 0` means greedy; `eos_token_id` may be a list of stop ids; `generator` may be a list, one per
    prompt (each row then draws from its own: its tokens do not depend on the other rows). Finished rows report
    `pad_token_id`; once a quarter of the batch has finished, the finished rows leave it, so the rest decode
    with less work (fewer moves of the cache than dropping each row at once).
    """
    limit = max_total_len or model.config.max_position_embeddings
    max_new_tokens = max(0, min(max_new_tokens, limit - max(len(p) for p in prompts)))
    if max_new_tokens == 0:
        return
    dec = BatchDecoder(model, eos_token_id, pad_token_id)
    # A list of generators: one per prompt, each row drawn alone from its own (as the server draws a seeded request)
    gens = generator if isinstance(generator, (list, tuple)) else None
    sampling = [Sampling(temperature, top_p, top_k, repetition_penalty, g) for g in gens] if gens is not None else \
        Sampling(temperature, top_p, top_k, repetition_penalty, generator)
    dec.admit(prompts, sampling, max_new_tokens)
    bsz, device = len(prompts), dec.device
    rows = torch.arange(bsz, device=device)  # the batch row of each decoder row
    finished = torch.zeros(bsz, dtype=torch.bool, device=device)
    n_left = bsz  # rows still in the decoder
    for step in range(max_new_tokens):
        tok, lp = dec.sample(logprobs)
        done = finished[rows]
        tok = tok.masked_fill(done, pad_token_id)
        if n_left < bsz:  # back to the full batch
            full = torch.full((bsz,), pad_token_id, dtype=torch.long, device=device).index_copy_(0, rows, tok)
            full_lp = None if lp is None else torch.zeros(bsz, device=device, dtype=lp.dtype).index_copy_(0, rows, lp)
        else:
            full, full_lp = tok, lp
        yield full, full_lp, finished.clone()
        now = done | dec.is_stop(tok)
        finished[rows] = now
        if step == max_new_tokens - 1:
            return
        n_done = int(now.sum())  # the one host sync per token
        if n_done == n_left:
            return
        if n_done >= max(1, n_left // 4):
            keep = (~now).nonzero().squeeze(1)  # a rare second sync: only when rows leave
            dec.keep(keep.tolist())
            rows, tok, n_left = rows[keep], tok[keep], n_left - n_done
        dec.advance(tok)


def generate(model, prompts: Sequence[Sequence[int]], **kwargs) -> GenerationOutput:
    """Batched sampling; see `decode_steps` for the arguments."""
    device = next(model.parameters()).device
    pad_id = kwargs.get("pad_token_id", 0)
    ids, mask = left_pad(prompts, pad_id, device)
    toks, lps, alive = [], [], []
    for tok, lp, finished in decode_steps(model, prompts, **{**kwargs, "logprobs": True}):
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
    """Yield the generated token ids of one prompt as they are produced (the stop token included, then stop);
    see `decode_steps` for the arguments."""
    for tok, _, _ in decode_steps(model, [prompt], **{**kwargs, "logprobs": False}):
        yield int(tok[0])  # decode_steps ends after the stop token


def is_minimind(model) -> bool:
    # model_type, not isinstance: a torch2hf folder loads MiniMind's class from its own copy of the code
    return getattr(model.config, "model_type", None) == "minimind"


def stream_tokens(model, prompt_ids: Sequence[int], max_new_tokens: int = 512, temperature: float = 0.85,
                  top_p: float = 0.85, top_k: int = 0, repetition_penalty: float = 1.0, eos_token_id: int = 2,
                  pad_token_id: int = 0, generator: Optional[torch.Generator] = None) -> Iterator[int]:
    """Yield generated token ids (EOS included, then stop) of any causal LM: MiniMind through this engine, any
    other transformers model (e.g. a Llama export) through transformers' own `generate()` with a streamer."""
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    max_new_tokens = max(0, min(max_new_tokens, limit - len(prompt_ids)))
    if is_minimind(model):
        yield from stream_generate(model, list(prompt_ids), max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                                   eos_token_id=eos_token_id, pad_token_id=pad_token_id, generator=generator)
    else:
        yield from _hf_stream_tokens(model, prompt_ids, max_new_tokens, eos_token_id, pad_token_id,
                                     repetition_penalty, temperature, top_p, top_k)


def _hf_stream_tokens(model, prompt_ids, max_new_tokens, eos_token_id, pad_token_id, repetition_penalty,
                      temperature, top_p, top_k) -> Iterator[int]:
    """transformers' `generate()` in a worker thread, its tokens handed over through a streamer queue; stopping
    the iteration early (a client went away) stops the generation too."""
    import queue
    import threading

    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    class TokenQueue(BaseStreamer):
        def __init__(self):
            self.q, self.prompt_seen = queue.Queue(), False

        def put(self, value):  # first call: the prompt; then one tensor of new token ids per step
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            for t in value.reshape(-1).tolist():
                self.q.put(int(t))

        def end(self):
            self.q.put(None)

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    if max_new_tokens <= 0:
        return
    streamer, cancel, failure = TokenQueue(), threading.Event(), []
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if temperature > 0 else \
        dict(do_sample=False)
    ids = torch.tensor([list(prompt_ids)], device=next(model.parameters()).device)

    def work():
        try:
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                               repetition_penalty=repetition_penalty, streamer=streamer,
                               stopping_criteria=StoppingCriteriaList([Cancelled()]), **sampling)
        except BaseException as e:  # re-raised in the consumer's thread below
            failure.append(e)
            streamer.q.put(None)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        while (t := streamer.q.get()) is not None:
            yield t
            if t == eos_token_id:
                break
    finally:
        cancel.set()
        worker.join()
    if failure:
        raise failure[0]


# ================================================================================================================
# Text
# ================================================================================================================
class IncrementalDecoder:
    """Token ids in, text out, as they are generated.

    A Chinese character or an emoji spans several byte-level tokens; decoding them one at a time prints U+FFFD.
    So the ids are kept, and the text is released only once the decoded tail no longer ends in U+FFFD (an
    incomplete character). Only a short window is re-decoded each time, not the whole answer: the ids from the
    previous release on, whose text is known, give the context (tokenizers that drop a word's leading space at
    the start of a decode need it) and the new text is what lies beyond it.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: List[int] = []
        self.prefix = 0  # window start: ids[prefix:read] were printed by the previous release
        self.read = 0    # ids[:read] are fully printed

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly printable text (often '', e.g. mid-character)."""
        self.ids.append(int(token_id))
        return self._release(final=False)

    def _release(self, final: bool) -> str:
        known = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) <= len(known) or (text.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(known):]

    def flush(self) -> str:
        """Whatever is still held back (an invalid byte sequence at the very end), at the end of generation."""
        return self._release(final=True)

    @property
    def text(self) -> str:
        return self._decode(self.ids)


class StopMatcher:
    """OpenAI `stop` strings over streamed text: `feed` returns the text that is safe to show and whether a stop
    string appeared (text from it on is discarded). A possible start of a stop string is held back until decided."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.buf = ""

    def feed(self, text: str):
        if not self.stops:
            return text, False
        self.buf += text
        hits = [self.buf.find(s) for s in self.stops if s in self.buf]
        if hits:
            out, self.buf = self.buf[:min(hits)], ""
            return out, True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.buf)), keep, -1):
                if self.buf.endswith(s[:n]):
                    keep = n
                    break
        out, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out
