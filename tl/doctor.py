"""``python -m tl.doctor`` / ``srun python -m tl.doctor`` / ``accelerate launch -m tl.doctor``: the same as ``tl doctor``."""

from __future__ import annotations

from tl.cluster.doctor import CONTEXT, command

if __name__ == "__main__":
    from tl.entry import run_single

    run_single(command, context_settings=CONTEXT)
