"""LoRA: model/model_lora.py (apply / save / load / merge) and trainer/train_lora.py."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

from dataset.lm_dataset import PadCollator, SFTDataset  # noqa: E402
from helpers import (SAMPLE, run_script, save_tiny, tiny_cpu_flags, tiny_model as tiny_base_model,  # noqa: E402
                     train_log)
from model.model_lora import (LoRALinear, LoRALoadError, apply_lora, load_lora, lora_meta,  # noqa: E402
                              lora_state_dict, merge_lora, save_lora)
from model.checkpoint import load_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(moe=False, seed=0, init=0.02):
    """The tiny MiniMind in eval mode; MoE has 4 routed experts (top-2) and a shared one."""
    return tiny_base_model(seed, use_moe=moe, initializer_range=init).eval()


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
    assert lora_meta(path) == {"format": "minimind-lora", "rank": 8, "alpha": 16,
                               "targets": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                           "v_proj"]}
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(LoRALoadError, match=r"adapter.json: not valid JSON"):
        lora_meta(path)
    path.with_suffix(".json").unlink()
    assert lora_meta(path) is None  # an upstream adapter: no metadata, loaders fall back to alpha 16

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
    data = SAMPLE / "lora_identity.jsonl"
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

    def lm_loss():  # what train_lora.py's loop computes (dense: no balance loss)
        return model(input_ids=batch["input_ids"], labels=batch["labels"]).loss

    losses = []
    for _ in range(40):
        loss = lm_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"LoRA loss did not drop enough: {losses[0]:.3f} -> {losses[-1]:.3f}"
    state = model.state_dict()
    for k, v in base.items():
        assert torch.equal(state[k], v), f"base parameter {k} changed"
    # and the adapter carries what was learned: merged model reproduces the trained loss
    trained = lm_loss().item()
    merge_lora(model)
    assert abs(lm_loss().item() - trained) < 1e-3


# ----------------------------------------------------------------------------------------------------------------
# The script, end to end: single process, then resumed under 2-process DDP (gloo)
# ----------------------------------------------------------------------------------------------------------------
def test_train_lora_script_ddp_then_resume(tmp_path, run_in_process):
    """2-process gloo run (a real torchrun subprocess), then --from_resume 1 in a single process (a resume
    across world sizes); only the adapter is written, under out/lora/."""
    save_tiny(tmp_path / "full_sft_64.pth")
    script = ROOT / "trainer" / "train_lora.py"
    common = [*tiny_cpu_flags(tmp_path, tmp_path / "ck"), "--data_path", SAMPLE / "lora_identity.jsonl",
              "--batch_size", "2", "--log_interval", "1", "--max_seq_len", "64", "--learning_rate", "1e-3",
              "--lora_name", "lora_test"]
    out = run_script([script, *common, "--max_steps", "2"], tmp_path, nproc=2, cache=tmp_path / "cache",
                     timeout=120).stdout
    assert "trainable of" in out and "%)" in out and "2 process(es)" in out
    adapter = tmp_path / "lora" / "lora_test_64.pth"
    assert adapter.is_file() and not (tmp_path / "lora_64.pth").exists()
    first = torch.load(adapter, weights_only=True)
    assert set(first) == set(lora_state_dict(apply_lora(tiny_model())))  # only the adapter, un-prefixed keys
    assert json.loads(adapter.with_suffix(".json").read_text()) == {
        "format": "minimind-lora", "rank": 8, "alpha": 16.0,
        "targets": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]}
    assert any(v.abs().sum() > 0 for k, v in first.items() if "lora_B" in k)  # it trained

    out = run_in_process(script, *common, "--max_steps", "6", "--from_resume", "1")
    assert "resumed from" in out
    steps = [r["step"] for r in train_log(tmp_path, "lora/lora_test_64")]
    assert steps[:2] == [1, 2] and steps[-1] == 6 and steps == sorted(set(steps)), steps  # continued, appended
    model = apply_lora(tiny_model())
    load_lora(model, adapter)  # loads strictly
    second = lora_state_dict(model)
    assert any(not torch.equal(first[k], second[k]) for k in first)
