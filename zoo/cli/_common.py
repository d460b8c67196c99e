"""What every subcommand of ``zoo`` shares: the one ``error:`` line, the command a printed hint should use, rank 0."""
from __future__ import annotations

import os
import re
import sys

__all__ = ["fail", "launcher", "is_main_process", "one_line"]

# torch's DataLoader re-raises a worker's exception as "Caught X in DataLoader worker process N.\nOriginal Traceback
# ... \nX: message": the user's message is the last line of that traceback
_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.S)


def one_line(exc: BaseException) -> str:
    """The message of a user error as it is printed: a DataLoader worker's wrapped traceback is reduced to the
    original exception's message (the text after its type on the last line)."""
    text = str(exc)
    if _WORKER.match(text):
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def fail(exc: BaseException) -> int:
    """Print a user error (one of :data:`zoo.errors.USER_ERRORS`) as one ``error:`` message on stderr and return
    exit status 2; ``ZOO_DEBUG=1`` re-raises it (the traceback, for a bug report)."""
    if os.environ.get("ZOO_DEBUG"):
        raise exc
    print(f"error: {one_line(exc)}", file=sys.stderr)
    return 2


def launcher(prog: str, script: str) -> str:
    """How to run this subcommand again, for printed hints (resume commands, cell commands): ``zoo train`` when it
    was started as ``zoo train`` (``prog``: the argparse prog), else ``python tools/<script>`` (the README's form,
    run from the repository root)."""
    if prog.startswith(("zoo", "python -m zoo")):
        return prog
    return f"python tools/{script}"


def is_main_process() -> bool:
    """Whether this process prints the final lines: rank 0 under ``torchrun`` / ``accelerate launch`` (``RANK``),
    or the only process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"
