"""``python -m tl.predict_dir`` / ``accelerate launch -m tl.predict_dir``: the same function as ``tl predict-dir``."""

from __future__ import annotations

from tl.predict import predict_dir_command as command

if __name__ == "__main__":
    from tl.cli import run_single

    run_single(command)
