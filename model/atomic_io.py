"""Atomic file writes, written once for the whole repository.

Every output (weights, resume checkpoints, LoRA adapters, JSON results, reports, answer files) is written to a
temp file in the same folder and then `os.replace`d over the target: a crash, Ctrl-C or full disk never leaves
a torn file behind, only the old one or the new one.

It lives in model/ because that is the lowest layer: model/model_lora.py, trainer/, scripts/ and eval_llm.py
can all import it without pulling in each other. It needs nothing but the standard library (torch is
imported only by `atomic_save`), so light tools such as scripts/report.py stay light.
"""
import os
from pathlib import Path
from typing import Callable, IO


def atomic_write(path, write: Callable[[IO], None], mode: str = "wb", encoding: str = None) -> Path:
    """Open a temp file next to `path`, call `write(f)`, fsync, then rename it over `path`; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_save(obj, path) -> Path:
    """torch.save, atomically."""
    import torch
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path, text: str) -> Path:
    """Write UTF-8 text, atomically."""
    return atomic_write(path, lambda f: f.write(text), mode="w", encoding="utf-8")
