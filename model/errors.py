"""User mistakes versus bugs, written once for the whole repository.

A user mistake (a missing file, a malformed JSONL line, weights that do not fit the flags, a bad flag
combination) ends a command with ONE line, `error: <what and where>`, and exit status 2. Anything else is a
bug and keeps its traceback. Every error class that means "the user must fix an input" derives from
`UserError`; `FileNotFoundError` counts as one too.

Standard library only: light tools (scripts/report.py, scripts/data_stats.py) import it without torch.
"""
import sys
from contextlib import contextmanager
from typing import Callable


class UserError(Exception):
    """An input the user has to fix; its message names the file and line, the flag or the field."""


USER_ERRORS = (UserError, FileNotFoundError)


def report_user_error(e: BaseException) -> int:
    """Print one `error: ...` line on stderr (no traceback); returns the exit status 2."""
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2


@contextmanager
def exit_on_user_error():
    """Turn a user mistake raised inside the block into one `error:` line and `sys.exit(2)`. Under torchrun the
    process group is torn down first, so the other ranks fail fast instead of waiting in a collective."""
    try:
        yield
    except USER_ERRORS as e:
        status = report_user_error(e)
        if "torch.distributed" in sys.modules:
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        sys.exit(status)


def run_main(main: Callable, *args, **kwargs):
    """Call a command's main() under `exit_on_user_error`."""
    with exit_on_user_error():
        return main(*args, **kwargs)
