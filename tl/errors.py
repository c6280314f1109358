"""The one exception type users see: a problem and its fix, printed as two short lines."""

from __future__ import annotations

# Exit code of a run that saved its state because it was asked to stop (SIGTERM/SIGUSR1, as SLURM sends
# before a time limit or preemption): sysexits' EX_TEMPFAIL, "try again later". Job scripts requeue on it.
EXIT_REQUEUE = 75


class TLError(Exception):
    """An error caused by the user's input or environment, not by a bug in tl.

    The CLI prints ``message`` and ``hint`` without a traceback (set ``TL_DEBUG=1`` to see it).
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class Stopped(KeyboardInterrupt):
    """A run that was asked to stop (Ctrl-C, a notebook's interrupt, SIGTERM/SIGUSR1 as SLURM sends) and stopped
    cleanly. A KeyboardInterrupt, so that an interrupt from Python stays one (``except Exception`` does not swallow
    it); ``tl train`` and ``tl predict-dir`` turn it into exit code EXIT_REQUEUE and the command-line hint."""

    def __init__(self, signal_name: str, state_dir: str | None, *, where: str = "",
                 resume: str = "continue with tl.train(..., resume='auto')") -> None:
        self.signal_name, self.state_dir = signal_name, state_dir
        self.where = where or (f"state saved in {state_dir}" if state_dir else
                               "stopped before the first training step (states saved earlier are kept)")
        super().__init__(f"{signal_name}: {self.where}; {resume}")
