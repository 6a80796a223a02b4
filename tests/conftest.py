"""Test-wide settings: keep caches and trackers out of the repo and offline."""
import os
import tempfile

# Index caches of JSONL files go to a throwaway folder, not the repo's .cache/.
os.environ.setdefault("MINIMIND_CACHE", tempfile.mkdtemp(prefix="minimind_test_cache_"))
# Never talk to wandb / swanlab servers from tests.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("SWANLAB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
