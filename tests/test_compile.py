"""torch.compile (`--compile` / `--use_compile 1`): the compiled dense and MoE models compute what eager does.

Inductor on a CPU writes and builds C++; these tests skip when no C++ compiler is installed. Compiling is the
slow part (tens of seconds per graph on a 2-core CPU), so each test compiles as little as it can.
"""
import shutil

import pytest
import torch

from helpers import SAMPLE, run_trainer, tiny_model, train_log

pytestmark = [
    pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                       reason="torch.compile (inductor) needs a C++ compiler on a CPU; none found"),
    pytest.mark.usefixtures("one_thread"),
]

LAYERS = 1  # compile time grows with the graph; one block exercises every op (attention, MLP / MoE)


def loss_and_grads(forward, model, ids, labels):
    """Loss of `forward` (the model or its compiled wrapper) and the gradients on `model`'s parameters."""
    out = forward(ids, labels=labels)
    loss = out.loss + out.aux_loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("use_moe", [False, True], ids=["dense", "moe"])
def test_compiled_model_matches_eager_loss_and_gradients(use_moe):
    model = tiny_model(0, use_moe=use_moe, n_routed_experts=4, num_experts_per_tok=2, num_hidden_layers=LAYERS)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 6400, (2, 48), generator=g)
    labels = ids.clone()
    labels[0, :10] = -100  # a masked prompt, as in SFT
    labels[1, 40:] = -100  # padding
    eager_loss, eager_grads = loss_and_grads(model, model, ids, labels)
    compiled = torch.compile(model, dynamic=False)
    loss, grads = loss_and_grads(compiled, model, ids, labels)
    torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == eager_grads.keys()
    if use_moe:  # every routed expert and the router got a gradient in both
        assert any(".experts.3." in n for n in grads) and any(".gate.weight" in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_compile_flag_trains_like_eager(tmp_path):
    """`--compile` through train_pretrain.py (compiled forward, DDP-free, packed blocks): same losses as eager."""
    common = ["--data_path", SAMPLE / "pretrain.jsonl", "--batch_size", 4, "--accumulation_steps", 1,
              "--max_seq_len", 64, "--learning_rate", 1e-3, "--max_steps", 3, "--log_interval", 1]
    run_trainer("train_pretrain.py", *common, tmp=tmp_path / "eager")
    proc = run_trainer("train_pretrain.py", *common, "--compile", tmp=tmp_path / "compiled")
    eager = [r["loss"] for r in train_log(tmp_path / "eager" / "out", "pretrain_64")]
    compiled = [r["loss"] for r in train_log(tmp_path / "compiled" / "out", "pretrain_64")]
    assert len(eager) == len(compiled) == 3
    assert compiled == pytest.approx(eager, abs=1e-4), (eager, compiled)
    assert "compil" in (proc.stdout + proc.stderr).lower()  # the run says it compiles (the first steps are slow)
    # the released weights have the plain model's keys (no `_orig_mod.` prefix from the compile wrapper)
    sd = torch.load(tmp_path / "compiled" / "out" / "pretrain_64.pth", weights_only=True)
    assert "model.embed_tokens.weight" in sd and not any(k.startswith("_orig_mod") for k in sd)
