"""Test-wide settings (caches and trackers out of the repo and offline) and the fixtures several test files
share. Plain helper functions shared by test files are in helpers.py."""
import os
import runpy
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Index caches of JSONL files go to a throwaway folder, not the repo's .cache/.
os.environ.setdefault("MINIMIND_CACHE", tempfile.mkdtemp(prefix="minimind_test_cache_"))
# Never talk to wandb / swanlab servers from tests.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("SWANLAB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Remote code copied by trust_remote_code loads goes to a throwaway folder, not ~/.cache/huggingface/modules, and
# nothing may reach the Hugging Face Hub: tests run on local files only. (Set before transformers is imported:
# it reads both at import time. Subprocesses inherit them.)
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="minimind_test_hf_modules_"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer():
    """The shipped tokenizer (model/), loaded once per test module."""
    from model.checkpoint import load_tokenizer
    return load_tokenizer()


@pytest.fixture(scope="module")
def mm3():
    """Upstream's minimind-3 tokenizer from ../shared/data/reference, loaded once per test module; a test that
    asks for it is skipped, with the path it looked at, where the shared data is absent."""
    from helpers import MINIMIND3_TOKENIZER
    from model.checkpoint import load_tokenizer
    if not (MINIMIND3_TOKENIZER / "tokenizer.json").exists():
        pytest.skip(f"upstream's minimind-3 tokenizer is not at {MINIMIND3_TOKENIZER} (../shared/data/reference)")
    return load_tokenizer(MINIMIND3_TOKENIZER)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and OpenMP threads that spin-wait for a busy core make a
    loaded 2-core CI machine many times slower. A module opts in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`; the setting is restored after the module."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def run_in_process(monkeypatch, capsys):
    """run_in_process(script, *args) runs a script's __main__ inside this process (its real CLI and main(),
    without paying ~4 s of imports for another interpreter) and returns what it printed."""
    def run(script, *args):
        monkeypatch.setattr(sys, "argv", [str(script), *map(str, args)])
        monkeypatch.setenv("WANDB_MODE", "disabled")
        capsys.readouterr()
        runpy.run_path(str(script), run_name="__main__")
        return capsys.readouterr().out
    return run


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory, tokenizer):
    """A local reward model for the RL stages: a random 1-layer Llama sequence classifier (num_labels=1) with our
    tokenizer. Its rewards have a spread, so losses and gradients are not 0 (a random policy never answers, and
    every rule reward would be the same)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification
    path = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=6400, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=0,
                      max_position_embeddings=512)
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
