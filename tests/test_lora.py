"""LoRA: model/model_lora.py (apply / save / load / merge) and trainer/train_lora.py."""
import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

from dataset.lm_dataset import PadCollator, SFTDataset  # noqa: E402
from model.model_lora import (LoRALinear, LoRALoadError, apply_lora, load_lora, lora_state_dict,  # noqa: E402
                              merge_lora, save_lora)
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from trainer.trainer_utils import atomic_save, half_state_dict, lm_loss, load_tokenizer  # noqa: E402

TINY = ["--hidden_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4", "--num_key_value_heads", "2"]


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models gain nothing from intra-op threads, and OpenMP threads that spin-wait for a busy core make a
    loaded CI machine 10x slower; run these tests single-threaded and restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model(moe=False, seed=0, init=0.02):
    torch.manual_seed(seed)
    cfg = MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         use_moe=moe, n_routed_experts=4, num_experts_per_tok=2, initializer_range=init)
    return MiniMindForCausalLM(cfg).eval()


def randomize_adapters(model, seed=1):
    """Give every B a non-zero value, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)


IDS = torch.randint(3, 6400, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("moe", [False, True])
def test_fresh_adapter_is_noop_and_freezes_base(moe):
    model = tiny_model(moe)
    before = model(input_ids=IDS).logits
    apply_lora(model, rank=8, alpha=16)
    after = model(input_ids=IDS).logits
    assert torch.equal(before, after)  # B = 0 exactly: not a single bit changes
    n_linear_per_layer = 4 + 3 * (4 + 1 if moe else 1)  # attention + (routed + shared experts or one MLP) x 3
    adapters = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert len(adapters) == 2 * n_linear_per_layer
    if moe:
        assert "model.layers.0.mlp.experts.3.up_proj" in adapters
        assert "model.layers.1.mlp.shared_experts.0.down_proj" in adapters
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {k for k in lora_state_dict(model)}
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    keys = list(lora_state_dict(model))
    assert "model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "model.layers.1.mlp.down_proj.lora_B.weight" in keys or moe
    a = model.model.layers[0].self_attn.q_proj
    assert a.lora_A.weight.shape == (8, 64) and a.lora_B.weight.shape == (64, 8) and a.scaling == 2.0
    assert a.lora_A.weight.abs().sum() > 0 and a.lora_B.weight.abs().sum() == 0
    # base state-dict keys unchanged: a base checkpoint still loads into the wrapped model (non-strictly: the
    # adapters are extra)
    base_keys = set(tiny_model(moe).state_dict())
    assert base_keys <= set(model.state_dict()) and set(model.state_dict()) - base_keys == set(keys)


def test_targets_subset_short_names_and_typo():
    model = apply_lora(tiny_model(), rank=4, alpha=4, targets="q,v")
    names = sorted({n.rsplit(".", 2)[0].rsplit(".", 1)[-1] for n in lora_state_dict(model)})
    assert names == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="qq_proj"):
        apply_lora(tiny_model(), targets="qq")
    with pytest.raises(RuntimeError, match="already has LoRA"):
        apply_lora(model)
    with pytest.raises(ValueError, match="embeddings"):  # lm_head is tied to embed_tokens in MiniMind
        apply_lora(tiny_model(), targets="q,lm_head")


@pytest.mark.parametrize("moe", [False, True])
def test_merge_equals_base_plus_adapter(moe):
    model = apply_lora(tiny_model(moe), rank=8, alpha=16)
    randomize_adapters(model)
    with_adapter = model(input_ids=IDS).logits
    assert not torch.allclose(with_adapter, tiny_model(moe)(input_ids=IDS).logits, atol=1e-3)  # adapter matters
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(tiny_model(moe).state_dict())  # plain MiniMind keys again
    merged = model(input_ids=IDS).logits
    torch.testing.assert_close(merged, with_adapter, atol=2e-5, rtol=1e-5)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tying survives


def test_save_load_roundtrip_and_strict_errors(tmp_path):
    model = apply_lora(tiny_model(), rank=8, alpha=16)
    randomize_adapters(model)
    path = tmp_path / "adapter.pth"
    save_lora(model, path)
    state = torch.load(path, weights_only=True)
    assert set(state) == set(lora_state_dict(model)) and len(state) == 2 * 2 * 7
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temp file

    fresh = apply_lora(tiny_model(), rank=8, alpha=16)
    load_lora(fresh, path)
    assert torch.equal(fresh(input_ids=IDS).logits, model(input_ids=IDS).logits)

    with pytest.raises(LoRALoadError, match="missing"):  # adapter trained on q,v only, model has all targets
        small = apply_lora(tiny_model(), rank=8, alpha=16, targets="q,v")
        save_lora(small, tmp_path / "qv.pth")
        load_lora(fresh, tmp_path / "qv.pth")
    with pytest.raises(LoRALoadError, match="unexpected"):
        load_lora(apply_lora(tiny_model(), rank=8, alpha=16, targets="q,v"), path)
    with pytest.raises(LoRALoadError, match="lora_rank"):
        load_lora(apply_lora(tiny_model(), rank=4, alpha=16), path)
    with pytest.raises(LoRALoadError, match="no LoRA adapters"):
        load_lora(tiny_model(), path)
    with pytest.raises(FileNotFoundError):
        load_lora(fresh, tmp_path / "nope.pth")


def test_lora_learns_identity_and_base_stays_bit_identical():
    data = ROOT / "dataset" / "sample" / "lora_identity.jsonl"
    if not data.exists():
        pytest.skip(f"{data} not found")
    tokenizer = load_tokenizer()
    ds = SFTDataset(data, tokenizer, max_length=64)
    batch = PadCollator(tokenizer.pad_token_id)([ds[i] for i in range(4)])  # 4 identity conversations
    # A random base, initialised at std 0.1 instead of 0.02: with hidden 64 and std 0.02 the frozen tied
    # embeddings cap every logit near +-1.3 (|h| * |e_v| = 8 * 0.16), so no adapter on the projections could
    # express a confident answer. At 0.1 the untrained loss is still ~uniform (~9.1 vs ln 6400 = 8.76).
    model = tiny_model(init=0.1)
    model.train()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=8, alpha=32)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(40):
        loss = lm_loss(model, batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"LoRA loss did not drop enough: {losses[0]:.3f} -> {losses[-1]:.3f}"
    state = model.state_dict()
    for k, v in base.items():
        assert torch.equal(state[k], v), f"base parameter {k} changed"
    # and the adapter carries what was learned: merged model reproduces the trained loss
    trained = lm_loss(model, batch).loss.item()
    merge_lora(model)
    assert abs(lm_loss(model, batch).loss.item() - trained) < 1e-3


# ----------------------------------------------------------------------------------------------------------------
# The script, end to end: single process, then resumed under 2-process DDP (gloo)
# ----------------------------------------------------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(args, tmp_path, nproc=1, timeout=120):
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", MINIMIND_CACHE=str(tmp_path / "cache"))
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_port", str(free_port())]
    r = subprocess.run(launcher + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r.stdout


def save_tiny_base(tmp_path, name="full_sft_64.pth"):
    atomic_save(half_state_dict(tiny_model()), tmp_path / name)


def read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def run_in_process(script, args, monkeypatch, capsys):
    """Run a script's __main__ inside this process (its CLI and main(), without paying ~4 s of imports for
    another interpreter); returns what it printed."""
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    capsys.readouterr()
    runpy.run_path(str(script), run_name="__main__")
    return capsys.readouterr().out


def test_train_lora_script_ddp_then_resume(tmp_path, monkeypatch, capsys):
    """2-process gloo run (a real torchrun subprocess), then --from_resume 1 in a single process (TrainLoop
    resumes across world sizes); only the adapter is written, under out/lora/."""
    save_tiny_base(tmp_path)
    script = ROOT / "trainer" / "train_lora.py"
    common = [*TINY, "--save_dir", str(tmp_path),
              "--checkpoint_dir", str(tmp_path / "ck"), "--data_path", str(ROOT / "dataset/sample/lora_identity.jsonl"),
              "--device", "cpu", "--num_workers", "0", "--batch_size", "2", "--log_interval", "1",
              "--max_seq_len", "64", "--learning_rate", "1e-3", "--lora_name", "lora_test"]
    out = run_script([str(script), *common, "--max_steps", "2"], tmp_path, nproc=2)
    assert "trainable of" in out and "%)" in out and "2 process(es)" in out
    adapter = tmp_path / "lora" / "lora_test_64.pth"
    assert adapter.is_file() and not (tmp_path / "lora_64.pth").exists()
    first = torch.load(adapter, weights_only=True)
    assert set(first) == set(lora_state_dict(apply_lora(tiny_model())))  # only the adapter, un-prefixed keys
    assert any(v.abs().sum() > 0 for k, v in first.items() if "lora_B" in k)  # it trained

    out = run_in_process(script, common + ["--max_steps", "6", "--from_resume", "1"], monkeypatch, capsys)
    assert "resumed from" in out
    steps = [r["step"] for r in read_log(tmp_path / "logs" / "lora" / "lora_test_64.jsonl")]
    assert steps[:2] == [1, 2] and steps[-1] == 6 and steps == sorted(set(steps)), steps  # continued, appended
    model = apply_lora(tiny_model())
    load_lora(model, adapter)  # loads strictly
    second = lora_state_dict(model)
    assert any(not torch.equal(first[k], second[k]) for k in first)
