"""Knowledge distillation (trainer/train_distillation.py) and reasoning distillation (trainer/train_reason.py):
their loss pieces against direct formulas, token-exact tag weighting on real R1-style data, and both scripts
end to end with resume."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dataset.lm_dataset import PadCollator, SFTDataset, assistant_mask  # noqa: E402
from helpers import SAMPLE, SHARED, finish, save_tiny, start_script, tiny_cpu_flags, tiny_model, train_log  # noqa: E402
from model.checkpoint import WeightLoadError, load_tokenizer  # noqa: E402
from model.model_minimind import MiniMindConfig  # noqa: E402
from trainer.train_distillation import distillation_kl, distillation_loss  # noqa: E402
from trainer.train_reason import reason_loss, reason_token_weights, tag_token_ids  # noqa: E402
from trainer.trainer_utils import freeze, init_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------------------
# Distillation
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distillation_kl_matches_direct_formula(temperature):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 13, generator=g) * 3, torch.randn(2, 5, 13, generator=g) * 3
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    got = distillation_kl(s, t, mask, temperature)
    p_t, p_s = torch.softmax(t / temperature, -1), torch.softmax(s / temperature, -1)
    per_token = (p_t * (p_t.log() - p_s.log())).sum(-1)          # KL(p_t || p_s) at every position
    want = per_token[mask].mean() * temperature ** 2
    torch.testing.assert_close(got, want)
    assert distillation_kl(s, s, mask, temperature).abs() < 1e-6             # identical models: no KL
    assert distillation_kl(s, t, torch.zeros_like(mask), temperature) == 0   # nothing labelled: 0, not NaN


def test_teacher_loads_like_the_student_and_a_vocab_mismatch_is_a_clear_error(tmp_path):
    """The teacher goes through the student's init_model (then freeze): the file's weights, frozen; a teacher
    trained with another tokenizer fails its strict load with a message naming that vocabulary."""
    def teacher_config(hidden_size, vocab_size=6400):
        return MiniMindConfig(hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=vocab_size)

    def load(hidden_size, save_dir):
        return freeze(init_model(teacher_config(hidden_size), "full_sft", save_dir=save_dir, device="cpu",
                                 flag="--teacher_weight", size_flags="--teacher_hidden_size/--teacher_use_moe",
                                 log=lambda *a: None))

    save_tiny(tmp_path / "full_sft_128.pth", seed=3, hidden_size=128)
    teacher = load(128, tmp_path)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    want = tiny_model(3, hidden_size=128).half().float().state_dict()
    assert all(torch.equal(v, want[k]) for k, v in teacher.state_dict().items())
    other = tmp_path / "other"
    save_tiny(other / "full_sft_128.pth", hidden_size=128, vocab_size=6500)
    with pytest.raises(WeightLoadError, match="6500-token tokenizer"):
        load(128, other)
    with pytest.raises(FileNotFoundError, match="teacher_hidden_size"):
        load(256, tmp_path)


def sft_batch(path, n=4, max_len=256):
    tok = load_tokenizer()
    ds = SFTDataset(path, tok, max_length=max_len)
    return PadCollator(tok.pad_token_id)([ds[i] for i in range(n)]), tok, ds


def test_distillation_loss_limits():
    batch, _, _ = sft_batch(SAMPLE / "sft.jsonl")
    ids, labels = batch["input_ids"], batch["labels"]
    student = tiny_model(0)
    logits = student(input_ids=ids).logits
    teacher_logits = tiny_model(1, hidden_size=128)(input_ids=ids).logits
    # alpha = 1: plain SFT cross-entropy
    loss, ce, kl = distillation_loss(logits, teacher_logits, labels, alpha=1.0, temperature=2.0)
    want = student(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(ce, want)
    assert kl > 0
    # a teacher identical to the student: the KL term vanishes, whatever alpha
    same, _, _ = distillation_loss(logits, logits.detach(), labels, alpha=0.0, temperature=2.0)
    assert same.abs() < 1e-5
    # mixed: alpha * ce + (1 - alpha) * kl
    mix, ce, kl = distillation_loss(logits, teacher_logits, labels, alpha=0.3, temperature=2.0)
    torch.testing.assert_close(mix, 0.3 * ce + 0.7 * kl)


# ----------------------------------------------------------------------------------------------------------------
# Reasoning
# ----------------------------------------------------------------------------------------------------------------
def reason_data():
    real = SHARED / "mini" / "reason.jsonl"
    if not real.exists():
        pytest.skip(f"{real} not found: real R1-style data lives in …/shared/data")
    return real


def test_tag_weights_are_exactly_the_tag_tokens_of_a_real_sample():
    tok = load_tokenizer()
    tag_ids = tag_token_ids(tok)
    assert tag_ids == [tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>", "<answer>", "</answer>")]
    ds = SFTDataset(reason_data(), tok, max_length=1024)
    items = [it for it in (ds[i] for i in range(10)) if len(it["input_ids"]) < 1024][:3]  # whole, untruncated
    assert len(items) == 3
    for i, item in enumerate(items):
        ids, labels = item["input_ids"], torch.tensor(item["labels"])
        w = reason_token_weights(labels[None], tag_ids, 10.0)[0]
        for t, (tid, lab, wt) in enumerate(zip(ids, labels.tolist(), w.tolist())):
            want = 0.0 if lab == -100 else (10.0 if tid in tag_ids else 1.0)
            assert wt == want, f"sample {i} position {t} token {tok.convert_ids_to_tokens(tid)!r}: {wt} != {want}"
        weighted = [tok.convert_ids_to_tokens(ids[t]) for t in range(len(ids)) if w[t] == 10.0]
        assert weighted == ["<think>", "</think>", "<answer>", "</answer>"], weighted  # each tag once, in order
    # a tag quoted by the user is context, not a target: weight 0
    text = tok.apply_chat_template([{"role": "user", "content": "what does <think> mean?"},
                                    {"role": "assistant", "content": "<think>\nhm\n</think>\n<answer>\nx\n</answer>"}],
                                   tokenize=False)
    ids = tok(text, add_special_tokens=False).input_ids
    header = tok("assistant\n", add_special_tokens=False).input_ids
    mask = assistant_mask(ids, tok.bos_token_id, tok.eos_token_id, header)
    labels = torch.tensor([t if m else -100 for t, m in zip(ids, mask)])
    w = reason_token_weights(labels[None], tag_ids, 10.0)[0]
    first_think = ids.index(tag_ids[0])
    assert mask[first_think] == 0 and w[first_think] == 0
    assert (w == 10).sum() == 4


def test_reason_loss_weighting():
    batch, tok, _ = sft_batch(SAMPLE / "reason.jsonl")
    tag_ids = tag_token_ids(tok)
    model = tiny_model()
    ce = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    logits = model(input_ids=batch["input_ids"]).logits
    plain, _ = reason_loss(logits, batch["labels"], tag_ids, 1.0)
    torch.testing.assert_close(plain, ce)  # weight 1 is ordinary SFT
    weighted, weighted_ce = reason_loss(logits, batch["labels"], tag_ids, 10.0)
    logits, targets = logits[:, :-1], batch["labels"][:, 1:]
    per_tok = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    is_tag = torch.isin(targets, torch.tensor(tag_ids))
    n = (targets != -100).sum()
    assert is_tag.sum() == 4 * 4  # four tags in each of the four samples
    want = (per_tok.sum() + 9.0 * per_tok[is_tag].sum()) / n  # tags count 10x; normalised by the token count
    torch.testing.assert_close(weighted, want)
    torch.testing.assert_close(weighted_ce, ce)


# ----------------------------------------------------------------------------------------------------------------
# Both scripts end to end: 2 steps as real subprocesses (side by side: each is single-process, so on 2 cores
# this halves the wall time), then --from_resume 1 to step 4 in this process (same CLI and main(), without
# another ~4 s of imports).
# ----------------------------------------------------------------------------------------------------------------
def test_distillation_and_reason_scripts_resume(tmp_path, run_in_process):
    save_tiny(tmp_path / "full_sft_64.pth", 0)                     # distillation student
    save_tiny(tmp_path / "full_sft_128.pth", 1, hidden_size=128)   # its teacher
    save_tiny(tmp_path / "dpo_64.pth", 2)                          # reasoning start
    common = [*tiny_cpu_flags(tmp_path, tmp_path / "ck"), "--batch_size", "2", "--log_interval", "1",
              "--max_seq_len", "128", "--learning_rate", "1e-3"]
    distill = [ROOT / "trainer" / "train_distillation.py", *common,
               "--data_path", SAMPLE / "sft.jsonl", "--teacher_hidden_size", "128",
               "--teacher_num_hidden_layers", "2", "--teacher_num_attention_heads", "4"]
    reason = [ROOT / "trainer" / "train_reason.py", *common, "--data_path", SAMPLE / "reason.jsonl"]
    procs = [start_script([*args, "--max_steps", "2"], tmp_path, cache=tmp_path / "cache")
             for args in (distill, reason)]
    outs = [finish(p, timeout=180).stdout for p in procs]
    assert f"loaded weights from {tmp_path / 'full_sft_128.pth'}" in outs[0] and "'<think>': 3" in outs[1]
    for args in (distill, reason):
        out = run_in_process(*args, "--max_steps", "4", "--from_resume", "1")
        assert "resumed from" in out and "step 2" in out, out
    for name, keys in (("full_dist_64", ("ce", "kl")), ("reason_64", ("ce",))):
        assert (tmp_path / f"{name}.pth").is_file() and (tmp_path / "ck" / f"{name}_resume.pth").is_file()
        log = train_log(tmp_path, name)
        assert [r["step"] for r in log] == [1, 2, 3, 4], name
        assert all(k in r for r in log for k in ("loss", *keys)), name
    state = torch.load(tmp_path / "full_dist_64.pth", weights_only=True)
    assert set(state) == set(tiny_model().state_dict())  # the student's shape, not the teacher's
    log = train_log(tmp_path, "reason_64")
    assert all(r["loss"] > r["ce"] for r in log)  # tags weigh 10x on top of the per-token mean
