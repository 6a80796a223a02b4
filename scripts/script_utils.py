"""Small pieces the command-line tools in scripts/ share: writing their outputs and figures (user errors are
model/errors.py's: UserError, report_user_error, run_main).

Light on purpose (standard library at import time): scripts/report.py and scripts/data_stats.py import it
without pulling in torch or transformers.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model.atomic_io import atomic_write_text  # noqa: E402


def write_json(obj, path) -> Path:
    """Pretty UTF-8 JSON, written atomically: a crash never leaves a half-written results file for a later tool
    (report.py) to choke on."""
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend: plots work without a display (CI, ssh)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path) -> Path:
    """Write `fig` to `path` (format from the suffix), creating the folder, and release its memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    pyplot().close(fig)
    return path

