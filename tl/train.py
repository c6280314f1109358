"""``python -m tl.train`` / ``accelerate launch -m tl.train``: the same function and flags as ``tl train``.

The recipe itself is ``tl.training.run``; the flags are ``tl.training.command``.
"""

from __future__ import annotations

from tl.training.command import command

if __name__ == "__main__":
    from tl.entry import run_single

    run_single(command)
