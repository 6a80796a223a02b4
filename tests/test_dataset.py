"""Datasets: formats, token-by-token SFT masks, bad-line errors, the truncation check (check_trainable), dynamic
padding, resumable sampling."""
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset.lm_dataset import (DataFormatError, DataLengthError, DPODataset, JsonlFile, PadCollator,  # noqa: E402
                                PretrainDataset, RLAIFDataset, SFTDataset, check_pretrain, check_trainable,
                                iter_jsonl)
from helpers import write_jsonl  # noqa: E402
from trainer.trainer_utils import ResumableSampler  # noqa: E402


CONV = {"conversations": [
    {"role": "system", "content": "You are MiniMind."},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！我是MiniMind。"},
    {"role": "user", "content": "1+1=?"},
    {"role": "assistant", "content": "1+1=2 😀"},
]}


def test_sft_mask_token_by_token(tokenizer, tmp_path):
    ds = SFTDataset(write_jsonl(tmp_path / "sft.jsonl", [CONV]), tokenizer, max_length=512)
    item = ds[0]
    ids, labels = item["input_ids"], item["labels"]
    # Build the expected sequence piece by piece from the template's pieces, marking what must be learned.
    im_start, im_end = tokenizer.bos_token_id, tokenizer.eos_token_id
    enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    expected, learn = [], []
    for turn in CONV["conversations"]:
        head = [im_start] + enc(f"{turn['role']}\n")
        body = enc(turn["content"]) + [im_end]
        tail = enc("\n")
        is_assistant = turn["role"] == "assistant"
        expected += head + body + tail
        learn += [0] * len(head) + [int(is_assistant)] * len(body) + [0] * len(tail)
    assert ids == expected
    assert [int(l != -100) for l in labels] == learn
    assert all(l == t for l, t in zip(labels, ids) if l != -100)
    # The learned tokens decode to exactly the two replies, each closed by <|im_end|>.
    learned = tokenizer.decode([t for t, m in zip(ids, learn) if m], skip_special_tokens=False)
    assert learned == "你好！我是MiniMind。<|im_end|>1+1=2 😀<|im_end|>"


@pytest.mark.parametrize("reply", ["\n\nLeading newlines.", "\nOne newline", "  two spaces", "\n"])
def test_sft_reply_starting_with_whitespace_keeps_its_labels(tokenizer, tmp_path, reply):
    """The turn header ends in "\n"; a reply that starts with whitespace must not merge with it into one token
    (the mask finds turns by the header's tokens and would then miss the whole reply)."""
    conv = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}]}
    item = SFTDataset(write_jsonl(tmp_path / "sft.jsonl", [conv]), tokenizer, max_length=128)[0]
    learned = [t for t, l in zip(item["input_ids"], item["labels"]) if l != -100]
    assert tokenizer.decode(learned, skip_special_tokens=False) == reply + "<|im_end|>"


def test_sft_with_tools_masks_only_assistant(tokenizer, tmp_path):
    rec = {"tools": [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}],
           "conversations": [{"role": "user", "content": "time?"},
                             {"role": "assistant", "content": "", "tool_calls": [
                                 {"type": "function", "function": {"name": "get_time", "arguments": {}}}]},
                             {"role": "tool", "content": "12:00"},
                             {"role": "assistant", "content": "It is 12:00."}]}
    item = SFTDataset(write_jsonl(tmp_path / "t.jsonl", [rec]), tokenizer)[0]
    learned = tokenizer.decode([t for t, l in zip(item["input_ids"], item["labels"]) if l != -100])
    assert "get_time" in learned and "It is 12:00." in learned
    assert "12:00\n</tool_response>" not in learned and "time?" not in learned


def test_sft_truncation_keeps_mask_aligned(tokenizer, tmp_path):
    ds = SFTDataset(write_jsonl(tmp_path / "s.jsonl", [CONV]), tokenizer, max_length=20)
    item = ds[0]
    assert len(item["input_ids"]) == len(item["labels"]) == 20


def test_pretrain_bos_eos_and_truncation(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "Hello world. 你好世界。"}, {"text": "x " * 500}])
    ds = PretrainDataset(path, tokenizer, max_length=32)
    a = ds[0]["input_ids"]
    assert a[0] == tokenizer.bos_token_id and a[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(a[1:-1]) == "Hello world. 你好世界。"
    b = ds[1]["input_ids"]
    assert len(b) == 32 and b[0] == tokenizer.bos_token_id and b[-1] == tokenizer.eos_token_id


def test_dpo_masks_only_final_response(tokenizer, tmp_path):
    prompt = [{"role": "user", "content": "Capital of France?"}]
    rec = {"chosen": prompt + [{"role": "assistant", "content": "Paris."}],
           "rejected": prompt + [{"role": "assistant", "content": "London."}]}
    item = DPODataset(write_jsonl(tmp_path / "d.jsonl", [rec]), tokenizer)[0]
    for side, reply in (("chosen", "Paris."), ("rejected", "London.")):
        ids, labels = item[f"{side}_input_ids"], item[f"{side}_labels"]
        assert tokenizer.decode([t for t, l in zip(ids, labels) if l != -100], skip_special_tokens=False) \
            == reply + "<|im_end|>"
    batch = PadCollator(0)([item, item])
    assert batch["input_ids"].shape[0] == 4  # [chosen, chosen, rejected, rejected]


def test_rlaif_prompt_ends_with_generation_header(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"conversations": [{"role": "user", "content": "讲个笑话"}, {"role": "assistant", "content": "无"}]},
        {"question": "What is 2+3?", "answer": "2+3=5\n#### 5"}])
    ds = RLAIFDataset(path, tokenizer)
    assert ds[0]["prompt"].endswith("<|im_start|>user\n讲个笑话<|im_end|>\n<|im_start|>assistant\n")
    assert ds[1]["prompt"].endswith("What is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert ds[1]["answer"].endswith("#### 5")


# ------------------------------------------------------------------------------------------------ bad input
def test_malformed_line_names_file_and_line(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"text": "ok"}, '{"text": "broken', {"text": "ok"}])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:3: invalid JSON"):
        PretrainDataset(path, tokenizer)


def test_wrong_schema_names_file_and_line(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "schema.jsonl", [CONV, {"text": "not a conversation"}])
    with pytest.raises(DataFormatError, match=r"schema\.jsonl:2: .*conversations"):
        SFTDataset(path, tokenizer)


def test_skip_bad_lines_counts_and_skips(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "skip.jsonl", [{"text": "a"}, "not json", {"txt": "b"}, "", {"text": "c"}])
    f = JsonlFile(path, check_pretrain, skip_bad_lines=True, use_cache=False)
    assert len(f) == 2 and f.n_bad == 2
    assert [f[i]["text"] for i in range(2)] == ["a", "c"]
    assert f.location(1).endswith("skip.jsonl:5")


def test_missing_file_is_clear(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        PretrainDataset(tmp_path / "nope.jsonl", tokenizer)


def test_index_is_cached_and_invalidated_on_change(tmp_path, monkeypatch):
    import dataset.lm_dataset as lm
    monkeypatch.setattr(lm, "CACHE_DIR", tmp_path / "cache")
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "a"}, {"text": "b"}])
    assert len(JsonlFile(path, check_pretrain)) == 2
    assert len(list((tmp_path / "cache" / "jsonl_index").glob("*.npz"))) == 1
    write_jsonl(path, [{"text": "a"}, {"text": "b"}, {"text": "c"}])
    assert len(JsonlFile(path, check_pretrain)) == 3


def test_byte_offsets_handle_multibyte_text(tokenizer, tmp_path):
    recs = [{"text": "中文" * i + "😀"} for i in range(1, 50)]
    f = JsonlFile(write_jsonl(tmp_path / "m.jsonl", recs), check_pretrain, use_cache=False)
    assert [f[i] for i in (0, 17, 48)] == [recs[0], recs[17], recs[48]]


# ------------------------------------------------------------------------------------------------ truncation
# A system prompt of ~200 tokens: under --max_seq_len 64 the sample is cut before its reply (all labels -100).
LONG_SYSTEM = {"role": "system", "content": "You are MiniMind, a small and helpful assistant. " * 20}


def chat(user, reply, system=None):
    return {"conversations": ([system] if system else []) + [{"role": "user", "content": user},
                                                             {"role": "assistant", "content": reply}]}


def test_check_trainable_stops_when_most_sft_samples_keep_no_label(tokenizer, tmp_path):
    """All, or more than half, of the samples cut before their reply: an error with the file, the count and a
    --max_seq_len that fits (checked: at that length nothing is cut)."""
    for n_cut, n_short in [(4, 0), (3, 2)]:
        path = write_jsonl(tmp_path / f"cut{n_cut}.jsonl", [chat(f"q{i}", f"a{i}", LONG_SYSTEM) for i in range(n_cut)]
                           + [chat(f"hi {i}", f"hello {i}") for i in range(n_short)])
        ds = SFTDataset(path, tokenizer, max_length=64)
        assert all(set(ds[i]["labels"]) == {-100} for i in range(n_cut))  # the silent failure being caught
        with pytest.raises(DataLengthError) as e:
            check_trainable(ds, 64)
        msg = str(e.value)
        assert msg.startswith(f"{n_cut} of {n_cut + n_short} samples in {path} have no trainable token after "
                              f"truncation to --max_seq_len 64: they contribute nothing to the loss."), msg
        fitting = int(re.search(r"--max_seq_len (\d+) fits 90% of them whole", msg).group(1))
        assert fitting > 64 and check_trainable(SFTDataset(path, tokenizer, fitting), fitting) == 0


def test_check_trainable_warns_about_a_minority_and_counts_from_the_first_reply(tokenizer, tmp_path, capsys):
    """One cut sample of four: a warning line, and training goes on (the count is returned). A multi-turn sample
    whose first reply fits but whose later turns are cut still has labels: it counts as trainable."""
    multi = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                               {"role": "user", "content": "more " * 100}, {"role": "assistant", "content": "ok"}]}
    path = write_jsonl(tmp_path / "some.jsonl", [chat("q", "a", LONG_SYSTEM), chat("hi", "hello"), multi, multi])
    ds = SFTDataset(path, tokenizer, max_length=64)
    assert check_trainable(ds, 64) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"[data] warning: 1 of 4 samples in {path} have no trainable token after truncation to "
                          f"--max_seq_len 64: they contribute nothing to the loss; training goes on"), out
    assert check_trainable(ds, 64, verbose=False) == 1 and capsys.readouterr().out == ""  # ranks > 0: silent
    assert check_trainable(ds, 4096) == 0 and capsys.readouterr().out == ""  # nothing cut: nothing printed


def test_check_trainable_on_a_large_file_checks_an_even_spread(tokenizer, tmp_path):
    """Past `max_checked` records the check reads that many, spread over the file, and says so."""
    path = write_jsonl(tmp_path / "big.jsonl", [chat(f"q{i}", "a", LONG_SYSTEM) for i in range(10)])
    with pytest.raises(DataLengthError, match=r"^4 of 4 samples in .*big\.jsonl \(4 checked, spread over its 10\) "):
        check_trainable(SFTDataset(path, tokenizer, 64), 64, max_checked=4)


def test_check_trainable_stops_on_rl_prompts_longer_than_the_limit(tokenizer, tmp_path):
    """RL prompts are cut to their last --max_prompt_len tokens: when most are longer, they lose their start."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "word " * 50 + f"question {i}"} for i in range(3)]
                       + [{"question": "short"}])
    ds = RLAIFDataset(path, tokenizer, 32)
    with pytest.raises(DataLengthError, match=rf"^3 of 4 prompts in {re.escape(str(path))} are longer than "
                                              r"--max_prompt_len 32: each is cut to its last 32 tokens .*"
                                              r"--max_prompt_len \d+ fits 90% of them whole"):
        check_trainable(ds, 32, "--max_prompt_len")
    assert check_trainable(RLAIFDataset(path, tokenizer, 0), 0, "--max_prompt_len") == 0  # 0: prompts kept whole


# ------------------------------------------------------------------------------------------------ batching
def test_dynamic_padding_loss_equals_unpadded():
    """Right padding to the batch's longest sample leaves every real position's loss unchanged."""
    from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)).eval()
    samples = [{"input_ids": list(range(5, 5 + n)), "labels": list(range(5, 5 + n))} for n in (9, 4, 13)]
    batch = PadCollator(pad_id=0)(samples)
    assert batch["input_ids"].shape == (3, 13)
    assert batch["attention_mask"].sum(1).tolist() == [9, 4, 13]
    fixed = PadCollator(pad_id=0, pad_to=32)(samples)
    assert fixed["input_ids"].shape == (3, 32)
    with torch.no_grad():
        logits = model(batch["input_ids"]).logits
        logits_fixed = model(fixed["input_ids"]).logits
        total, count = 0.0, 0
        for i, s in enumerate(samples):
            ids = torch.tensor([s["input_ids"]])
            ref = model(ids).logits
            assert torch.allclose(ref[0], logits[i, :len(s["input_ids"])], atol=1e-5)
            assert torch.allclose(ref[0], logits_fixed[i, :len(s["input_ids"])], atol=1e-5)
            total += torch.nn.functional.cross_entropy(ref[0, :-1], ids[0, 1:], reduction="sum")
            count += len(s["input_ids"]) - 1
        padded_loss = model(batch["input_ids"], labels=batch["labels"]).loss
        fixed_loss = model(fixed["input_ids"], labels=fixed["labels"]).loss
    assert torch.allclose(padded_loss, total / count, atol=1e-5)
    assert torch.allclose(fixed_loss, padded_loss, atol=1e-5)


# ------------------------------------------------------------------------------------------------ sampler
def test_sampler_is_deterministic_and_resumes_mid_epoch():
    s = ResumableSampler(23, seed=7)
    s.set_epoch(1)
    full = list(s)
    assert sorted(full) == list(range(23))
    s.set_epoch(1, consumed=10)
    assert list(s) == full[10:] and len(s) == 13
    s.set_epoch(2)
    assert list(s) != full, "each epoch reshuffles"


def test_sampler_resume_on_a_different_world_size():
    """Samples consumed by 2 ranks, then resumed on 3: the union continues the same global order."""
    n, b, consumed = 40, 4, 16
    one = ResumableSampler(n, seed=3, batch_size=b)
    one.set_epoch(0)
    order = list(one)
    ranks = []
    for r in range(3):
        s = ResumableSampler(n, rank=r, world_size=3, seed=3, batch_size=b)
        s.set_epoch(0, consumed=consumed)
        ranks.append(list(s))
    # Micro-batch k of rank r is global chunk k * world_size + r.
    dealt = [x for k in range(len(ranks[0]) // b) for r in range(3) for x in ranks[r][k * b:(k + 1) * b]]
    assert dealt[:n - consumed] == order[consumed:]
    assert len({len(r) for r in ranks}) == 1, "every rank must get the same number of samples"


def test_length_grouped_batches_are_homogeneous_and_complete():
    lengths = torch.randint(1, 1000, (300,)).tolist()
    s = ResumableSampler(300, seed=1, batch_size=8, lengths=lengths)
    s.set_epoch(0)
    order = list(s)
    assert sorted(order) == list(range(300)), "every sample exactly once per epoch"
    batches = [order[i:i + 8] for i in range(0, 296, 8)]
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 100, f"batches should hold similar lengths (mean spread {spread:.0f})"
    # Padding waste drops well below random batching.
    waste = lambda bs: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)  # noqa
    random_batches = [list(range(i, i + 8)) for i in range(0, 296, 8)]
    assert waste(batches) < 0.2 * waste(random_batches)
    s.set_epoch(0, consumed=40)
    assert list(s) == order[40:], "resumable mid-epoch"
    s.set_epoch(1)
    assert list(s) != order


# ------------------------------------------------------------------------------------------------ packing
def test_token_cache_packs_blocks_without_padding(tokenizer, tmp_path):
    from dataset.lm_dataset import PackedPretrainDataset
    texts = [f"Document {i}: " + "MiniMind 很小。" * (i % 7 + 1) for i in range(60)]
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in texts])
    ds = PackedPretrainDataset(path, tokenizer, max_length=32, cache_dir=tmp_path / "cache")
    stream = []
    for t in texts:
        stream += [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert len(ds) == len(stream) // 32
    got = torch.cat([ds[i]["input_ids"] for i in range(len(ds))]).tolist()
    assert got == stream[:len(ds) * 32], "blocks are the exact token stream"
    item = ds[0]
    assert (item["labels"][item["input_ids"] == tokenizer.bos_token_id] == -100).all(), "BOS is never a target"
    assert (item["labels"] != -100).sum() == (item["input_ids"] != tokenizer.bos_token_id).sum()
    # Cached: a second dataset reuses the files; editing the data rebuilds.
    bins = list((tmp_path / "cache").glob("*.bin"))
    PackedPretrainDataset(path, tokenizer, max_length=32, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*.bin")) == bins
    write_jsonl(path, [{"text": t} for t in texts[:30]])
    small = PackedPretrainDataset(path, tokenizer, max_length=32, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.bin"))) == 2 and len(small) < len(ds)


def test_document_aware_packing_equals_separate_documents(tokenizer, tmp_path):
    """With doc_attention, a packed block's loss equals the loss of its documents trained one by one."""
    from dataset.lm_dataset import PackedPretrainDataset, stack_collate
    from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
    from trainer.trainer_utils import lm_loss
    texts = ["short one", "a somewhat longer second document here", "三号文档", "the fourth and final"]
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    docs = [[tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for t in texts]
    total = sum(map(len, docs))
    ds = PackedPretrainDataset(path, tokenizer, max_length=total, doc_attention=True, cache_dir=tmp_path / "c")
    assert len(ds) == 1
    item = ds[0]
    assert item["position_ids"].tolist() == [i for d in docs for i in range(len(d))]
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               initializer_range=0.2)).eval()
    with torch.no_grad():
        packed = lm_loss(model, stack_collate([item])).loss
        nll, n = 0.0, 0
        for d in docs:
            ids = torch.tensor([d])
            logits = model(ids).logits
            nll += torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
            n += len(d) - 1
        plain = lm_loss(model, stack_collate([dict(input_ids=item["input_ids"], labels=item["labels"])])).loss
    assert torch.allclose(packed, nll / n, atol=1e-5)
    assert not torch.allclose(plain, packed, atol=1e-4), "without the mask documents see each other"


@pytest.mark.parametrize("seq_len", [64, 200])  # one flex block; a partial second block of 128
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # the CPU reference path on purpose
def test_flex_attention_block_mask_equals_the_dense_sdpa_mask(seq_len):
    """The CUDA path (flex_attention with a BlockMask, here eager on the CPU) gives the logits and loss of the
    dense boolean mask for packed documents, including documents that cross 128-token tiles. (PyTorch has no
    flex_attention backward on a CPU: gradients are not compared here, and training on a CPU refuses flex.)"""
    from dataset.lm_dataset import doc_attention_mask, doc_causal_mask
    from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
    from trainer.trainer_utils import lm_loss
    g = torch.Generator().manual_seed(0)
    lengths = [[5, 40, seq_len - 45], [seq_len - 3, 3]]
    doc_ids = torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in lengths])
    pos = torch.tensor([[j for n in row for j in range(n)] for row in lengths])
    ids = torch.randint(3, 6400, (2, seq_len), generator=g)
    batch = dict(input_ids=ids, labels=ids.clone(), position_ids=pos, doc_ids=doc_ids,
                 attention_mask=torch.ones_like(ids))
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, initializer_range=0.2)).eval()
    with torch.no_grad():
        sdpa = lm_loss(model, batch, doc_attention_impl="sdpa").loss
        flex = lm_loss(model, batch, doc_attention_impl="flex").loss
        torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)
        logits = {impl: model(ids, attention_mask=doc_attention_mask(doc_ids, impl), position_ids=pos).logits
                  for impl in ("sdpa", "flex")}
        torch.testing.assert_close(logits["flex"], logits["sdpa"], atol=1e-4, rtol=1e-4)
        one_doc = lm_loss(model, dict(batch, doc_ids=torch.zeros_like(doc_ids)), doc_attention_impl="flex").loss
    assert not torch.allclose(one_doc, flex, atol=1e-4), "the document boundaries must matter"
    assert torch.equal(doc_attention_mask(doc_ids), doc_causal_mask(doc_ids)), "auto = dense mask on a CPU"
    with pytest.raises(ValueError, match="no backward on the CPU"):
        doc_attention_mask(doc_ids, "flex")  # grad enabled, CPU tensors: training would fail later, less clearly


def test_iter_jsonl_numbers_lines_and_names_the_bad_one(tmp_path):
    path = tmp_path / "small.jsonl"
    path.write_text('{"a": 1}\n\n  \n[2]\n{"b": "x"}\n{"broken": \n', encoding="utf-8")
    got = []
    with pytest.raises(DataFormatError, match=r"small\.jsonl:6: invalid JSON \("):
        for item in iter_jsonl(path):
            got.append(item)
    assert got == [(1, {"a": 1}), (4, [2]), (5, {"b": "x"})]  # blank lines skipped, numbering kept
