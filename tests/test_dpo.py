"""DPO: the loss (trainer/train_dpo.py dpo_loss / sequence_logps), learning on real preference pairs, and the
script end to end (2-process gloo run, then a resumed single-process run)."""
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

from dataset.lm_dataset import DataLengthError, DPODataset, PadCollator, check_trainable  # noqa: E402
from helpers import (SAMPLE, SHARED, run_script, save_tiny, tiny_cpu_flags, tiny_model, train_log,  # noqa: E402
                     write_jsonl)
from trainer.train_dpo import dpo_loss, sequence_logps  # noqa: E402
from trainer.trainer_utils import frozen_copy  # noqa: E402
from model.checkpoint import half_state_dict, load_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# Fixed log-probs: pair 0 moved towards chosen (h = 2), pair 1 towards rejected (h = -1).
PC, PR = torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -4.0])
RC, RR = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -5.0])
H = [2.0, -1.0]


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_matches_hand_computation(loss_type, beta):
    losses, chosen, rejected = dpo_loss(PC, PR, RC, RR, beta, loss_type)
    expected = {
        "sigmoid": [math.log(1 + math.exp(-beta * h)) for h in H],   # -log sigmoid(beta h)
        "ipo": [(h - 1 / (2 * beta)) ** 2 for h in H],
        "hinge": [max(0.0, 1 - beta * h) for h in H],
    }[loss_type]
    torch.testing.assert_close(losses, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chosen, torch.tensor([beta * 1.0, 0.0]))      # beta (logpi - logref), chosen
    torch.testing.assert_close(rejected, torch.tensor([beta * -1.0, beta * 1.0]))
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(PC, PR, RC, RR, beta, "kto")


def test_sequence_logps_matches_manual_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, :3] = -100          # prompt
    labels[1, 5:] = -100          # padding
    labels[2, :] = -100           # nothing labelled -> 0
    got = sequence_logps(logits, labels)
    logp = torch.log_softmax(logits, -1)
    want = torch.zeros(3)
    for b in range(3):
        for t in range(1, 7):  # the token at t is predicted by position t-1
            if labels[b, t] != -100:
                want[b] += logp[b, t - 1, labels[b, t]]
    torch.testing.assert_close(got, want)
    assert got[2] == 0


def short_pairs(n=8, max_len=64):
    data = SHARED / "mini" / "dpo.jsonl"
    if not data.exists():
        pytest.skip(f"{data} not found: real preference pairs live in …/shared/data")
    ds = DPODataset(data, load_tokenizer(), max_length=4096)
    items = []
    for i in range(len(ds)):
        rec = ds.data[i]
        if sum(len(t.get("content") or "") for t in rec["chosen"] + rec["rejected"]) > 400:
            continue  # cheap pre-filter on characters before tokenizing
        it = ds[i]
        if max(len(it["chosen_input_ids"]), len(it["rejected_input_ids"])) <= max_len:
            items.append(it)  # whole pairs (nothing truncated), so both responses are scored in full
        if len(items) == n:
            break
    assert len(items) == n, f"only {len(items)} pairs of <= {max_len} tokens in {data}"
    return PadCollator(0)(items)


def dpo_batch_loss(model, ref, batch, beta=0.1):
    """What train_dpo.py's loop computes for one batch of B pairs (rows [chosen; rejected]): the mean loss and
    the metrics it logs."""
    ids, labels, n = batch["input_ids"], batch["labels"], batch["input_ids"].shape[0] // 2
    with torch.no_grad():
        ref_logps = sequence_logps(ref(input_ids=ids).logits, labels)
    logps = sequence_logps(model(input_ids=ids).logits, labels)
    losses, chosen, rejected = dpo_loss(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], beta, "sigmoid")
    metrics = {"chosen_reward": chosen.mean().item(), "rejected_reward": rejected.mean().item(),
               "reward_acc": (chosen > rejected).float().mean().item(), "margin": (chosen - rejected).mean().item()}
    return losses.mean(), metrics


def test_dpo_on_real_pairs_learns_the_preference():
    batch = short_pairs()
    model = tiny_model().train()
    ref = frozen_copy(model)
    assert not any(p.requires_grad for p in ref.parameters())

    loss, m = dpo_batch_loss(model, ref, batch)  # policy == reference: every implicit reward is 0
    assert abs(loss.item() - math.log(2)) < 1e-5
    assert m["reward_acc"] == 0.0 and m["margin"] == 0.0

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(12):
        loss, _ = dpo_batch_loss(model, ref, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss, m = dpo_batch_loss(model.eval(), ref, batch)
    assert m["reward_acc"] > 0.5, m
    assert m["margin"] > 0 and m["chosen_reward"] > m["rejected_reward"], m
    assert loss.item() < 0.5 * math.log(2), loss.item()
    # the reference did not move
    ref_again = frozen_copy(tiny_model())
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), ref_again.state_dict().values()))


def test_pairs_cut_before_their_response_stop_the_run(tmp_path):
    """A long shared prompt cuts both responses away under --max_seq_len: the pair compares nothing. With an earlier
    assistant turn in the prompt, `last_only` then labels THAT turn, identically on both sides (labels exist, yet
    the pair teaches nothing): the check counts from the untruncated response, so it catches this case too."""
    tok = load_tokenizer()
    prompt = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
              {"role": "user", "content": "Tell me about Paris. " * 30}]
    pairs = [{"chosen": prompt + [{"role": "assistant", "content": f"Paris is the capital of France ({i})."}],
              "rejected": prompt + [{"role": "assistant", "content": f"London ({i})."}]} for i in range(3)]
    short = {side: prompt[:1] + [{"role": "assistant", "content": side}] for side in ("chosen", "rejected")}
    path = write_jsonl(tmp_path / "d.jsonl", pairs + [short])
    ds = DPODataset(path, tok, max_length=64)
    item = ds[0]
    assert item["chosen_labels"] == item["rejected_labels"] and set(item["chosen_labels"]) != {-100}
    with pytest.raises(DataLengthError, match=r"^3 of 4 pairs in .*d\.jsonl lose their chosen or rejected response "
                                              r"to truncation at --max_seq_len 64: they contribute nothing to the "
                                              r"loss\. --max_seq_len (\d+) fits 90% of them whole") as e:
        check_trainable(ds, 64)
    fitting = int(re.search(r"--max_seq_len (\d+) fits", str(e.value)).group(1))
    assert check_trainable(DPODataset(path, tok, max_length=fitting), fitting) == 0


# ----------------------------------------------------------------------------------------------------------------
# The script end to end
# ----------------------------------------------------------------------------------------------------------------
def test_train_dpo_script_ddp_then_resume(tmp_path, run_in_process):
    """2-process gloo run (a real torchrun subprocess), then --from_resume 1 in a single process."""
    save_tiny(tmp_path / "full_sft_64.pth")
    script = ROOT / "trainer" / "train_dpo.py"
    common = [*tiny_cpu_flags(tmp_path, tmp_path / "ck"), "--data_path", SAMPLE / "dpo.jsonl", "--batch_size", "2",
              "--log_interval", "1", "--max_seq_len", "128", "--learning_rate", "1e-3", "--loss_type", "ipo"]
    out = run_script([script, *common, "--max_steps", "2"], tmp_path, nproc=2, cache=tmp_path / "cache",
                     timeout=120).stdout
    assert "2 process(es)" in out and "reward_acc" in out
    weights = tmp_path / "dpo_64.pth"
    assert weights.is_file() and (tmp_path / "ck" / "dpo_64_resume.pth").is_file()
    first = torch.load(weights, weights_only=True)
    base = half_state_dict(tiny_model())
    assert set(first) == set(base) and any(not torch.equal(first[k], base[k]) for k in base)  # trained

    out = run_in_process(script, *common, "--max_steps", "6", "--from_resume", "1")
    assert "resumed from" in out
    log = train_log(tmp_path, "dpo_64")
    steps = [r["step"] for r in log]
    assert steps[:2] == [1, 2] and steps[-1] == 6 and steps == sorted(set(steps)), steps
    for key in ("loss", "chosen_reward", "rejected_reward", "reward_acc", "margin"):
        assert all(key in r and math.isfinite(r[key]) for r in log), key
    assert log[0]["reward_acc"] == 0.0 and abs(log[0]["loss"] - 1 / (4 * 0.1 ** 2)) < 1e-3  # IPO at h=0: (1/2b)^2
