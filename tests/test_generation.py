"""model/generation.py, the one decoding engine: BatchDecoder (rows joining and leaving a running batch, per-row
sampling, cache growth), the fixed-batch loops built on it (generate, stream_generate) and the text helpers.
Tiny random models on CPU."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import tiny_model  # noqa: E402
import model.generation as G  # noqa: E402
from model.generation import (BatchDecoder, IncrementalDecoder, Sampling, StopMatcher, generate,  # noqa: E402
                              stream_generate)

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = [[1, 5, 77, 300, 12], [1, 900], [1, 44, 45, 46, 47, 48, 49, 50, 51, 52], [1, 2000, 3000]]


@pytest.fixture(scope="module")
def model():
    # A larger init keeps a random model from repeating one token forever under greedy decoding.
    return tiny_model(0, initializer_range=0.3).eval()


def greedy_no_cache(model, prompt, n, penalty=1.0, ban=None):
    """The reference: full forward over the whole sequence per token, no cache, no padding."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[:, -1].float()
            if ban is not None:
                logits[:, ban] = float("-inf")
            if penalty != 1.0:
                logits = G.process_logits(logits, 0, repetition_penalty=penalty, seen=torch.tensor([ids]))
            ids.append(int(logits.argmax(-1)))
    return ids[len(prompt):]


def test_generate_drops_finished_rows_and_matches_one_by_one(model, monkeypatch):
    """Rows finishing at different steps leave the batch; the others still get exactly their own tokens."""
    want = [greedy_no_cache(model, p, 12) for p in PROMPTS]
    # Stop tokens that end rows 1 and 3 early (at different steps) and leave the others running.
    stops = [want[1][2], want[3][5]]
    if any(s in want[0] + want[2] for s in stops) or stops[1] in want[1][:3] or stops[0] in want[3][:6]:
        pytest.skip("degenerate sample: a stop token appears in another row")
    cut = [w[:next((i + 1 for i, t in enumerate(w) if t in stops), len(w))] for w in want]
    sizes = []
    real_keep = BatchDecoder.keep
    monkeypatch.setattr(BatchDecoder, "keep", lambda self, rows: (sizes.append(len(rows)), real_keep(self, rows)))
    out = generate(model, PROMPTS, max_new_tokens=12, temperature=0, eos_token_id=stops, pad_token_id=0)
    assert sizes == [3, 2]  # row 1 left after step 3, row 3 after step 6
    for i, c in enumerate(cut):
        n = len(c)
        assert out.responses[i, :n].tolist() == c
        assert out.response_mask[i].tolist() == [1] * n + [0] * (12 - n)
        assert out.responses[i, n:].tolist() == [0] * (12 - n)  # padding after the stop token
        assert (out.logprobs[i, n:] == 0).all()


def test_equal_prompts_are_prefilled_once_and_decode_as_alone(model, monkeypatch):
    """The G copies of an RL prompt share one prefill (fewer rows in the first forward); every row still gets
    exactly its own greedy tokens, and seeded sampling is the same draw as without the sharing."""
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[2], PROMPTS[1], PROMPTS[0]]
    rows = []
    real_forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **kw: (rows.append((kw or {}).get("input_ids", a and a[0]).shape),
                                                            real_forward(*a, **kw))[1])
    out = generate(model, prompts, max_new_tokens=6, temperature=0, eos_token_id=-1)
    assert rows[0] == (3, len(PROMPTS[2])) and rows[1] == (6, 1)  # 3 distinct prompts prefilled, 6 rows decode
    for i, p in enumerate(prompts):
        assert out.responses[i].tolist() == greedy_no_cache(model, p, 6)
    sampled = generate(model, prompts, max_new_tokens=6, temperature=1.0, eos_token_id=-1,
                       generator=torch.Generator().manual_seed(0))
    monkeypatch.undo()
    dec = BatchDecoder(model, stop_token_ids=-1)  # the same prompts admitted one by one: no sharing possible
    for i, p in enumerate(prompts):
        dec.admit([p], Sampling(), 6, tags=[i])
    probs = F.softmax(dec.logits, -1)
    torch.testing.assert_close(probs[[0, 2, 5]], probs[[0]].expand(3, -1))  # the shared rows' logits are right
    first = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(0)).squeeze(1)
    assert sampled.responses[:, 0].tolist() == first.tolist()
    assert len(set(map(tuple, sampled.responses[[0, 2, 5]].tolist()))) > 1  # copies still sample on their own


def test_gqa_decode_step_equals_the_full_forward():
    """A one-token step attends with the query heads grouped over their shared KV head (no repeat_kv copy of the
    cache): its logits equal the full forward's at that position, with left padding and with QK-norm."""
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2]]
    for qk_norm in (False, True):
        m = tiny_model(0, initializer_range=0.3, qk_norm=qk_norm).eval()
        assert m.config.num_attention_heads > m.config.num_key_value_heads
        out = generate(m, prompts, max_new_tokens=5, temperature=0, eos_token_id=-1)
        mask = out.attention_mask
        with torch.no_grad():
            full = m(input_ids=out.sequences, attention_mask=mask,
                     position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        assert torch.equal(full[:, out.prompt_len - 1:-1].argmax(-1), out.responses)
        lp = F.log_softmax(full[:, out.prompt_len - 1:-1].float(), -1).gather(2, out.responses[..., None])[..., 0]
        torch.testing.assert_close(out.logprobs, lp, atol=1e-4, rtol=1e-4)


def test_bf16_weights_decode_in_bf16(model):
    """Inference with bf16 weights (model.runtime.resolve_dtype's choice on CPUs with native bf16, emulated here):
    the cache is bf16 too, and every greedy token is a top choice of the fp32 model at its position (bf16 keeps ~3
    digits, so near-ties may go either way and the sequences may part: torch 2.7.1 parts by 0.11 of the logits'
    spread where 2.13 stays under 0.1; a broken cache or cast would pick tokens far below the top)."""
    m16 = tiny_model(0, initializer_range=0.3).eval().to(torch.bfloat16)
    dec = BatchDecoder(m16)
    dec.admit([PROMPTS[0]], Sampling(temperature=0), 4)
    assert dec.cache.k[0].dtype == torch.bfloat16 and dec.logits.dtype == torch.float32
    out = generate(m16, PROMPTS, max_new_tokens=12, temperature=0, eos_token_id=-1)
    mask = out.attention_mask
    with torch.no_grad():
        ref = model(input_ids=out.sequences, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    logits = ref.logits[:, out.prompt_len - 1:-1].float()
    picked = logits.gather(2, out.responses[..., None])[..., 0]
    gap = logits.max(-1).values - picked  # 0 where bf16 chose what fp32 would
    spread = logits.std(-1)
    assert (gap < 0.25 * spread).all(), (gap / spread).max()
    assert (gap == 0).float().mean() > 0.8


def test_logprobs_are_the_sampling_distribution(model):
    gen = torch.Generator().manual_seed(3)
    out = generate(model, PROMPTS, max_new_tokens=6, temperature=0.7, top_k=50, eos_token_id=-1, generator=gen)
    with torch.no_grad():
        logits = model(out.sequences, attention_mask=out.attention_mask,
                       position_ids=(out.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits.float()
    P = out.prompt_len
    for t in range(6):
        filtered = G.process_logits(logits[:, P + t - 1], 0.7, 1.0, 50)
        lp = F.log_softmax(filtered, -1).gather(1, out.responses[:, t:t + 1]).squeeze(1)
        torch.testing.assert_close(lp, out.logprobs[:, t], atol=1e-4, rtol=0)
    again = generate(model, PROMPTS, max_new_tokens=6, temperature=0.7, top_k=50, eos_token_id=-1,
                     generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.sequences, out.sequences)  # a generator makes sampling reproducible


def test_repetition_penalty_batched_equals_alone(model):
    """The penalty's history of a left-padded row holds its own tokens only (no padding id)."""
    for p in PROMPTS:
        want = greedy_no_cache(model, p, 8, penalty=1.3)
        assert generate(model, [p], max_new_tokens=8, temperature=0, repetition_penalty=1.3,
                        eos_token_id=-1).responses[0].tolist() == want
    batch = generate(model, PROMPTS, max_new_tokens=8, temperature=0, repetition_penalty=1.3, eos_token_id=-1)
    assert [r.tolist() for r in batch.responses] == [greedy_no_cache(model, p, 8, penalty=1.3) for p in PROMPTS]


def test_stream_generate_stops_after_the_stop_token(model):
    want = greedy_no_cache(model, PROMPTS[0], 10)
    assert list(stream_generate(model, PROMPTS[0], max_new_tokens=10, temperature=0, eos_token_id=-1)) == want
    stop = want[4]
    got = list(stream_generate(model, PROMPTS[0], max_new_tokens=10, temperature=0, eos_token_id=stop))
    assert got == want[:want.index(stop) + 1]
    assert list(stream_generate(model, PROMPTS[0], max_new_tokens=10, temperature=0, max_total_len=7)) == want[:2]


def test_decoder_admits_rows_mid_batch_with_their_own_sampling(model):
    """Rows joining a running batch (shorter and longer prompts, merged into the shared cache, which grows
    many times) with different settings get exactly what they would get alone."""
    settings = [Sampling(temperature=0), Sampling(temperature=0, repetition_penalty=1.3),
                Sampling(temperature=0, ignore_eos=True), Sampling(temperature=0)]
    lengths = [12, 20, 8, 15]
    eos = greedy_no_cache(model, PROMPTS[2], 3)[1]  # row 2 would sample it here, but ignores EOS
    want = [greedy_no_cache(model, p, n, s.repetition_penalty, eos if s.ignore_eos else None)
            for p, n, s in zip(PROMPTS, lengths, settings)]
    assert eos not in want[2]
    dec = BatchDecoder(model, stop_token_ids=eos, chunk=2)
    got = {i: [] for i in range(4)}

    def step():
        tok, _ = dec.sample()
        still = []
        for k, (row, t) in enumerate(zip(dec.rows, tok.tolist())):
            got[row.tag].append(t)
            if row.generated < row.max_new_tokens:
                still.append(k)
        dec.keep(still)
        if still:
            dec.advance(tok[still])

    dec.admit([PROMPTS[0]], settings[0], lengths[0], tags=[0])
    step()
    step()
    dec.admit([PROMPTS[1], PROMPTS[2]], settings[1:3], lengths[1:3], tags=[1, 2])
    step()
    dec.admit([PROMPTS[3]], settings[3], lengths[3], tags=[3])
    while len(dec):
        step()
    assert [got[i] for i in range(4)] == want
    assert dec.grows >= 1


def greedy_turns(model, prompt, turns, penalty=1.0):
    """The reference of a multi-turn episode: greedy_no_cache over the whole context, turn after turn."""
    context, out = list(prompt), []
    for n, suffix in turns:
        out.append(greedy_no_cache(model, context, n, penalty))
        context += out[-1] + list(suffix or [])
    return out


def run_turns(model, episodes, sampling, readmit, chunk=None, late=()):
    """Multi-turn episodes in one BatchDecoder. An episode is (prompt, [(tokens to sample, suffix), ...]): a turn
    ends after its tokens, then its suffix is appended and the next turn starts (None: the episode ends).
    readmit=False continues a row in place, `advance(tok, suffixes, budgets)`; readmit=True is the old way, the
    row leaves (`keep`) and its whole context is admitted again. The episodes in `late` join at the third step.
    -> (tokens per episode and turn, [(context, logits right after its suffix)] of the in-place rows)."""
    dec = BatchDecoder(model, stop_token_ids=-1, chunk=chunk)
    got = {e: [[]] for e in range(len(episodes))}
    after_suffix = []

    def context(e):  # the prompt and the finished turns with their suffixes
        prompt, turns = episodes[e]
        return list(prompt) + [t for toks, (_, suffix) in zip(got[e][:-1], turns) for t in toks + suffix]

    def admit(es):
        if es:
            dec.admit([context(e) for e in es], sampling, [episodes[e][1][len(got[e]) - 1][0] for e in es], tags=es)

    admit([e for e in range(len(episodes)) if e not in late])
    step = 0
    while len(dec):
        tok, _ = dec.sample()
        kept, suffixes, budgets, rejoin = [], [], [], []
        for i, (row, t) in enumerate(zip(dec.rows, tok.tolist())):
            e = row.tag
            got[e][-1].append(t)
            if row.generated < row.max_new_tokens:
                kept.append(i), suffixes.append(None), budgets.append(None)
                continue
            turns = episodes[e][1]
            suffix = turns[len(got[e]) - 1][1]
            if suffix is None:  # the episode is over: its row leaves
                continue
            got[e].append([])
            if readmit:
                rejoin.append(e)
            else:
                kept.append(i), suffixes.append(suffix), budgets.append(turns[len(got[e]) - 1][0])
        dec.keep(kept)
        if kept:
            dec.advance(tok[kept], suffixes, budgets)
        if any(suffixes):  # a merge: the cache is no wider than its longest row (else every turn would widen it)
            assert min(row.pad for row in dec.rows) == 0
        for i, suffix in enumerate(suffixes):
            if suffix is not None:
                row = dec.rows[i]
                ctx = context(row.tag)
                assert (row.generated, row.max_new_tokens, row.prompt_len) == (0, budgets[i], len(ctx))
                # The penalty's history: the whole context, right-aligned like the cache, padded by its first token.
                assert dec.seen is None or dec.seen[i].tolist() == [ctx[0]] * row.pad + ctx
                after_suffix.append((context(row.tag), dec.logits[i].clone()))
        admit(rejoin)
        step += 1
        if step == 2:
            admit(list(late))
    return [got[e] for e in range(len(episodes))], after_suffix


# Turns that end at different steps with suffixes of different lengths (an empty one too), some on the same step
# (sampled tokens 3: episodes 0 and 2; 7: 0, 2 and 3), so that shorter suffixes are padded; episode 1 is a plain
# single-turn row alongside, the longest, so the rows that take a suffix have padding in common (left out of their
# sub-batch); episode 3 joins the running batch at the third step.
EPISODES = [(PROMPTS[0], [(3, [7, 8, 9]), (4, [5]), (2, None)]),
            ([1] + list(range(1000, 1030)), [(14, None)]),
            (PROMPTS[2], [(3, list(range(100, 111))), (4, [42, 43]), (1, []), (2, None)]),
            (PROMPTS[3], [(5, [600, 601, 602, 603, 604, 605]), (3, None)])]


@pytest.mark.parametrize("penalty, chunk", [(1.0, None), (1.3, 2)])
def test_turns_continued_in_the_cache_equal_a_prefill_of_the_whole_context(model, penalty, chunk):
    """advance() with suffixes: each row appends its tool results in place. The tokens equal the old way
    (leave, admit the whole context) and every episode run alone, and the logits after a suffix equal a fresh
    prefill's, with a repetition penalty (its history holds the suffixes) and a cache that grows too."""
    sampling = Sampling(temperature=0, repetition_penalty=penalty)
    want = [greedy_turns(model, p, turns, penalty) for p, turns in EPISODES]
    forwards = []
    real_forward = model.forward

    def counting(*args, **kwargs):
        forwards.append(kwargs["input_ids"].numel())
        return real_forward(*args, **kwargs)

    model.forward = counting
    try:
        in_place, after_suffix = run_turns(model, EPISODES, sampling, readmit=False, chunk=chunk, late=[3])
        cost = sum(forwards)
        forwards.clear()
        readmitted, _ = run_turns(model, EPISODES, sampling, readmit=True, chunk=chunk, late=[3])
    finally:
        del model.forward
    assert in_place == readmitted == want
    assert cost < sum(forwards)  # the contexts are not computed again
    assert len(after_suffix) == 6
    with torch.no_grad():
        for context, logits in after_suffix:
            torch.testing.assert_close(logits, model(torch.tensor([context])).logits[0, -1].float(),
                                       atol=1e-4, rtol=1e-4)


def test_a_suffix_leaves_the_other_rows_and_the_fast_path_alone(model):
    """Rows that only advance get exactly what they get alone; suffixes of all None is a plain step."""
    dec = BatchDecoder(model, stop_token_ids=-1)
    dec.admit(PROMPTS, Sampling(temperature=0), 6, tags=[0, 1, 2, 3])
    out = {i: [] for i in range(4)}
    for step in range(6):
        tok, _ = dec.sample()
        for row, t in zip(dec.rows, tok.tolist()):
            out[row.tag].append(t)
        suffixes = [[9, 10, 11] if step == 1 and row.tag == 2 else None for row in dec.rows]
        dec.advance(tok, suffixes, [6] * 4)
    assert [row.tag for row in dec.rows] == [0, 1, 2, 3]
    for i in (0, 1, 3):
        assert out[i] == greedy_no_cache(model, PROMPTS[i], 6)
    first = greedy_no_cache(model, PROMPTS[2], 2)
    assert out[2] == first + greedy_no_cache(model, PROMPTS[2] + first + [9, 10, 11], 4)


def test_ignore_eos_never_samples_a_stop_token(model):
    want = greedy_no_cache(model, PROMPTS[0], 6)
    dec = BatchDecoder(model, stop_token_ids=[want[0], want[1]])
    dec.admit([PROMPTS[0], PROMPTS[0]], [Sampling(temperature=0, ignore_eos=True), Sampling(temperature=0)], 6)
    tok, _ = dec.sample()
    assert tok[1] == want[0] and tok[0] != want[0] and tok[0] != want[1]
    assert dec.is_stop(tok).tolist() == [False, True]


def test_seeded_rows_do_not_depend_on_their_neighbours(model):
    def run(prompts, seeds):
        dec = BatchDecoder(model, stop_token_ids=-1)
        dec.admit(prompts, [Sampling(generator=torch.Generator().manual_seed(s)) for s in seeds], 5)
        out = []
        for _ in range(5):
            tok, _ = dec.sample()
            out.append(tok.tolist())
            dec.advance(tok)
        return [list(r) for r in zip(*out)]
    assert run(PROMPTS[:2], [7, 8])[0] == run(PROMPTS[:1], [7])[0] == run([PROMPTS[0], PROMPTS[2]], [7, 9])[0]


def test_stop_matcher_holds_back_a_possible_stop():
    m = StopMatcher(["END", "##"])
    assert m.feed("hello E") == ("hello ", False)
    assert m.feed("N") == ("", False)
    assert m.feed("Dless") == ("", True)  # "END" matched: the rest is discarded
    m = StopMatcher(["END"])
    assert m.feed("a EN") == ("a ", False) and m.flush() == "EN"
    assert StopMatcher([]).feed("x") == ("x", False)


def test_incremental_decoder_never_splits_a_character(tokenizer):
    text = "鳕鱼🐟 and 饕餮😀"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    d = IncrementalDecoder(tokenizer)
    pieces = [d.push(t) for t in ids] + [d.flush()]
    assert all("\ufffd" not in p for p in pieces) and "".join(pieces) == text == d.text
