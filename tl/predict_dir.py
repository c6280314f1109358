"""``python -m tl.predict_dir`` / ``accelerate launch -m tl.predict_dir``: the same function as ``tl predict-dir``."""

from __future__ import annotations

from tl.inference.commands import predict_dir_command as command

if __name__ == "__main__":
    from tl.entry import run_single

    run_single(command)
