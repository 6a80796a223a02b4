"""The server's scheduler: one worker thread owns the model and runs requests through model/generation.py.

Continuous batching: requests that arrive while others are generating join the running `BatchDecoder` at the
next step (their prompt is prefilled and merged into the shared KV cache); finished or cancelled ones leave it.
This file only schedules: it turns requests into decoder rows, hands each sampled token to its request, and
decides when a request ends. Models that are not MiniMind (e.g. a Llama export loaded with --load_from) go
through transformers' generate() one request at a time (`stream_tokens`). `run_between_steps` runs a function in
the worker thread between two decode steps (new weights from an RL trainer: no step ever sees half a reload).
"""
import concurrent.futures
import queue
import threading
import traceback
from collections import Counter
from typing import Callable, List, Optional, Sequence

import torch

from model.generation import BatchDecoder, Sampling, is_minimind, stream_tokens


class Job:
    """One request's generation. `emit(token, None)` per token, then `emit(None, reason)` once, where reason is
    'stop' (EOS), 'length' (max_new_tokens), 'cancelled' or 'error: ...'. Called from the worker thread.
    Set `cancel` (from any thread) to stop it: its row leaves the batch at the next step."""

    def __init__(self, prompt_ids: List[int], max_new_tokens: int, emit: Callable, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0, seed: Optional[int] = None,
                 ignore_eos: bool = False, stop_token_ids: Sequence[int] = (), logprobs: bool = False):
        self.prompt_ids, self.max_new_tokens, self.emit = list(prompt_ids), max_new_tokens, emit
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.repetition_penalty, self.seed, self.ignore_eos = repetition_penalty, seed, ignore_eos
        self.stop_token_ids = frozenset(stop_token_ids)  # stop after these too (EOS always, unless ignore_eos)
        self.logprobs = logprobs  # collect log p(token) of each sampled token in `token_logprobs` (batched only)
        self.token_logprobs: List[float] = []
        self.cancel = threading.Event()
        self.n_generated = 0


class Engine:
    """Owns the model; runs jobs in one worker thread, batching those that overlap in time.

    `admit()` and `step()` are also callable directly (no thread) for deterministic tests.
    stats: submitted, finished, cancelled, errors, tokens, steps, max_batch, cache_grows.
    """

    def __init__(self, model, eos_token_id: int, pad_token_id: int = 0, max_batch_size: int = 8,
                 cache_chunk: int = 256):
        self.model, self.eos, self.pad = model, eos_token_id, pad_token_id
        self.max_batch_size = max(1, max_batch_size)
        self.device = next(model.parameters()).device
        self.batched = is_minimind(model)  # other architectures: one job at a time through their own cache
        self.decoder = BatchDecoder(model, eos_token_id, pad_token_id, chunk=cache_chunk) if self.batched else None
        self.inbox: "queue.Queue[Optional[Job]]" = queue.Queue()
        self.calls: "queue.Queue[tuple]" = queue.Queue()  # (fn, future): run_between_steps
        self.single: Optional[Job] = None  # the job of a non-MiniMind model, while it runs
        self.stats = Counter()
        self.thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ thread
    def start(self):
        if self.thread is None:
            self._stop.clear()
            self.thread = threading.Thread(target=self._run, name="minimind-engine", daemon=True)
            self.thread.start()

    def stop(self):
        if self.thread is not None:
            self._stop.set()
            self.inbox.put(None)
            self.thread.join(timeout=10)
            self.thread = None

    def submit(self, job: Job):
        self.stats["submitted"] += 1
        self.inbox.put(job)

    def run_between_steps(self, fn: Callable) -> concurrent.futures.Future:
        """Run `fn()` in the worker thread before its next step (at once when no worker runs); the future
        holds its result or exception."""
        future = concurrent.futures.Future()
        self.calls.put((fn, future))
        if self.thread is None:
            self._run_calls()
        return future

    def _run_calls(self):
        while True:
            try:
                fn, future = self.calls.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn())
            except Exception as e:  # the caller reports it (e.g. a weight file that does not fit)
                future.set_exception(e)

    @property
    def jobs(self) -> List[Job]:
        if self.decoder is None:
            return [self.single] if self.single else []
        return [row.tag for row in self.decoder.rows]

    @property
    def active(self) -> int:
        return len(self.jobs)

    def _take(self, block: bool) -> List[Job]:
        """New jobs from the inbox: wait for one when idle, then take whatever else is already there."""
        room = self.max_batch_size - self.active if self.batched else 1
        new = []
        while len(new) < room:
            try:
                job = self.inbox.get(block=block and not new, timeout=0.1 if block and not new else None)
            except queue.Empty:
                break
            if job is None:  # stop() sentinel
                break
            if job.cancel.is_set():  # its client left while it waited
                self._finish(job, "cancelled")
                continue
            new.append(job)
        return new

    def _run(self):
        with torch.inference_mode():
            while not self._stop.is_set():
                self._run_calls()
                try:
                    new = self._take(block=not self.active)
                    if not self.batched:
                        for job in new:
                            self._run_single(job)
                        continue
                    if new:
                        self.admit(new)
                    if self.active:
                        self.step()
                except Exception as e:  # a bug or OOM: fail the running jobs, keep serving
                    self._fail(self.jobs, e)
                    if self.decoder is not None:
                        self.decoder.keep([])

    def _fail(self, jobs: List[Job], e: Exception):
        traceback.print_exc()
        self.stats["errors"] += 1
        for job in jobs:
            job.emit(None, f"error: {type(e).__name__}: {e}")

    def _finish(self, job: Job, reason: str):
        self.stats["cancelled" if reason == "cancelled" else "finished"] += 1
        job.emit(None, reason)

    # ------------------------------------------------------------------ batched decoding (MiniMind)
    def admit(self, new: List[Job]):
        """Prefill the new jobs' prompts and add them to the running batch."""
        sampling = [Sampling(j.temperature, j.top_p, j.top_k, j.repetition_penalty, ignore_eos=j.ignore_eos,
                             generator=None if j.seed is None else torch.Generator(self.device).manual_seed(j.seed))
                    for j in new]
        self.decoder.admit([j.prompt_ids for j in new], sampling, [j.max_new_tokens for j in new], tags=new)
        self.stats["max_batch"] = max(self.stats["max_batch"], self.active)

    def step(self):
        """Drop cancelled jobs, sample one token for every other, report it, drop finished jobs, run the next
        forward. One host sync per step for the whole batch (the tokens, as Python ints)."""
        dec = self.decoder
        live = []
        for i, job in enumerate(self.jobs):
            if job.cancel.is_set():
                self._finish(job, "cancelled")
            else:
                live.append(i)
        dec.keep(live)
        if not len(dec):
            return
        want_lp = any(row.tag.logprobs for row in dec.rows)
        tok, lp = dec.sample(want_lp)
        lps = lp.tolist() if want_lp else None
        still = []
        for i, t in enumerate(tok.tolist()):
            job = dec.rows[i].tag
            job.n_generated += 1
            self.stats["tokens"] += 1
            if job.logprobs:
                job.token_logprobs.append(lps[i])
            job.emit(t, None)
            if t in job.stop_token_ids or (t == self.eos and not job.ignore_eos):
                self._finish(job, "stop")
            elif job.n_generated >= job.max_new_tokens:
                self._finish(job, "length")
            else:
                still.append(i)
        self.stats["steps"] += 1
        grows = dec.grows
        dec.keep(still)
        if still:
            dec.advance(tok[still] if len(still) < len(tok) else tok)
        self.stats["cache_grows"] += dec.grows - grows

    # ------------------------------------------------------------------ one at a time (other architectures)
    def _run_single(self, job: Job):
        generator = torch.Generator(self.device).manual_seed(job.seed) if job.seed is not None else None
        self.single, t = job, None
        try:
            for t in stream_tokens(self.model, job.prompt_ids, job.max_new_tokens, job.temperature, job.top_p,
                                   job.top_k, job.repetition_penalty, self.eos, self.pad, generator):
                if job.cancel.is_set():
                    return self._finish(job, "cancelled")
                job.n_generated += 1
                self.stats["tokens"] += 1
                job.emit(t, None)
                if t in job.stop_token_ids:
                    break
            self._finish(job, "stop" if t == self.eos or t in job.stop_token_ids else "length")
        except Exception as e:
            self._fail([job], e)
        finally:
            self.single = None
