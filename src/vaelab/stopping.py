"""How a training run stops early: divergence, and SIGINT/SIGTERM turned into a clean stop.

The loop asks a :class:`SignalCatcher` before each step; a caught signal
stops the epoch there, a checkpoint is written at that step, and
:class:`Interrupted` carries the signal to the CLI's exit code.
"""

import signal
import threading

from vaelab.errors import VaelabError


class Diverged(VaelabError):
    """The loss became NaN or infinite; found at the first logging interval after it happened."""

    def __init__(self, epoch, step, value, checkpoint_kept=True):
        kept = "the last good checkpoint is kept" if checkpoint_kept else "no checkpoint had been written yet"
        super().__init__(
            f"epoch {epoch}, step {step}: the loss became {value}; {kept}; "
            "try a lower --lr, --clip-grad, or --detect-anomaly to find the operation"
        )


class Interrupted(VaelabError):
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint; `signum` says which."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


class SignalCatcher:
    """Turns SIGINT/SIGTERM into a request to stop at the next step (a second Ctrl-C quits at once)."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                # A signal the user chose to ignore (nohup ignores SIGINT) stays ignored.
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
