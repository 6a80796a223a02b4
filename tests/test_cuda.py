"""The CUDA-only paths, checked on a GPU machine (CI has none: every test here skips there).

  - flex_attention with a document BlockMask (pretraining's --doc_attention on CUDA): loss AND gradients equal
    the dense boolean SDPA mask's (a CPU has no flex backward, so tests/test_dataset.py compares forwards only);
  - bf16 autocast training on CUDA tracks fp32 for dense and MoE models of both generations;
  - our decoding engine and transformers' generate() with a KV cache equal greedy decoding without one;
  - a stage script end to end on CUDA (bf16, fused AdamW, flex document masks), and its exact resume.
"""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import SAMPLE, TINY_CFG, straight_and_resumed, train_log  # noqa: E402
from model.generation import generate  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


def cuda_model(preset="minimind2-small", seed=0, **kw) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    config = MiniMindConfig.from_preset(preset, **{**TINY_CFG, "initializer_range": 0.2, **kw})
    return MiniMindForCausalLM(config).cuda()


def packed_batch(seq_len=300, seed=0):
    """Two packed rows whose documents cross flex_attention's 128-token tiles."""
    g = torch.Generator().manual_seed(seed)
    lengths = [[5, 140, seq_len - 145], [seq_len - 3, 3]]
    doc_ids = torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in lengths])
    pos = torch.tensor([[j for n in row for j in range(n)] for row in lengths])
    ids = torch.randint(3, 6400, (2, seq_len), generator=g)
    return {k: v.cuda() for k, v in dict(input_ids=ids, labels=ids.clone(), position_ids=pos, doc_ids=doc_ids,
                                         attention_mask=torch.ones_like(ids)).items()}


@pytest.mark.parametrize("preset", ["minimind2-small", "minimind3"])
def test_flex_document_mask_loss_and_gradients_equal_the_dense_mask(preset):
    from trainer.trainer_utils import lm_loss
    model = cuda_model(preset)
    batch = packed_batch()
    grads, losses = {}, {}
    for impl in ("sdpa", "flex"):
        model.zero_grad(set_to_none=True)
        loss = lm_loss(model, batch, doc_attention_impl=impl).loss
        loss.backward()
        losses[impl] = loss.detach()
        grads[impl] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    torch.testing.assert_close(losses["flex"], losses["sdpa"], atol=1e-5, rtol=1e-5)
    for name, g in grads["sdpa"].items():
        torch.testing.assert_close(grads["flex"][name], g, atol=1e-4, rtol=1e-3, msg=name)
    with torch.no_grad():
        one_doc = lm_loss(model, dict(batch, doc_ids=torch.zeros_like(batch["doc_ids"])), "flex").loss
    assert not torch.allclose(one_doc, losses["flex"], atol=1e-4), "the document boundaries must matter"


@pytest.mark.parametrize("preset,use_moe", [("minimind2-small", False), ("minimind2-small", True),
                                            ("minimind3", False), ("minimind3-moe", True)])
def test_bf16_autocast_training_tracks_fp32(preset, use_moe):
    """Ten AdamW steps on two batches seen in turn (so the loss can fall): bf16 autocast (fp32 master weights)
    follows the fp32 loss curve."""
    from trainer.trainer_utils import make_optimizer
    curves = {}
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(3, 6400, (4, 128), generator=g).cuda() for _ in range(2)] * 5
    for dtype in (torch.float32, torch.bfloat16):
        model = cuda_model(preset, use_moe=use_moe).train()
        opt = make_optimizer(model.parameters(), 1e-3, 0.0, "cuda")
        curve = []
        for ids in data:
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                out = model(input_ids=ids, labels=ids)
                loss = out.loss + out.aux_loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            curve.append(loss.item())
        curves[dtype] = curve
    gaps = [abs(a - b) for a, b in zip(curves[torch.float32], curves[torch.bfloat16])]
    assert max(gaps) < 0.05, (curves, gaps)
    assert curves[torch.bfloat16][-1] < curves[torch.bfloat16][0]


@pytest.mark.parametrize("preset,use_moe", [("minimind2-small", False), ("minimind3-moe", True)])
def test_cached_decoding_equals_greedy_without_cache(preset, use_moe):
    model = cuda_model(preset, use_moe=use_moe).eval()
    prompt = torch.randint(3, 6400, (1, 9), generator=torch.Generator().manual_seed(2)).cuda()
    ids = prompt
    with torch.no_grad():
        for _ in range(16):
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
        hf = model.generate(prompt, max_new_tokens=16, do_sample=False, use_cache=True, eos_token_id=None)
    assert len(set(ids[0, 9:].tolist())) > 3, "test model too degenerate to catch cache bugs"
    assert torch.equal(hf, ids)
    ours = generate(model, [prompt[0].tolist()], max_new_tokens=16, temperature=0, eos_token_id=-1)
    assert ours.responses[0].tolist() == ids[0, 9:].tolist()


def test_pretrain_script_on_cuda_bf16_flex_resumes_exactly(tmp_path):
    """train_pretrain.py on CUDA with bf16 autocast, fused AdamW and flex document masks: the loss falls, and a
    run stopped at step 3 and resumed logs the uninterrupted run's steps 4-6."""
    flags = ["--device", "cuda", "--dtype", "bfloat16", "--data_path", SAMPLE / "pretrain.jsonl",
             "--batch_size", 4, "--max_seq_len", 256, "--doc_attention", 1, "--doc_attention_impl", "flex",
             "--learning_rate", 2e-3, "--log_interval", 1]
    straight, resumed, stopped = straight_and_resumed("train_pretrain.py", flags, ["--max_steps", 6],
                                                      ["--max_steps", 3], tmp_path)
    assert stopped["pretrain_64_resume.pth"][0] == 3
    a, b = train_log(straight / "out", "pretrain_64"), train_log(resumed / "out", "pretrain_64")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert a[-1]["loss"] < a[0]["loss"]
    for ra, rb in zip(a[3:], b[3:]):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=2e-3), (ra, rb)
