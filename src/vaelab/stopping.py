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
    """Turns SIGINT/SIGTERM into a request to stop (asked by calling it), acted on where it is safe.

    Training asks before each step; a second Ctrl-C there quits at once.
    Where raising inside the handler is unsafe (a C extension starting, a
    wait on a lock), `second_interrupt_raises` is False: every signal is only
    recorded (and `on_signal` called), and :meth:`deliver` hands it on after.
    """

    def __init__(self, on_signal=None, second_interrupt_raises=True):
        self.signum = None
        self._previous = {}
        self._on_signal, self._second_raises = on_signal, second_interrupt_raises

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self._second_raises and self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self._on_signal is not None:
            self._on_signal()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                # A signal the user chose to ignore (nohup ignores SIGINT) stays ignored,
                # and one whose handler was set outside Python (None) is left alone.
                if signal.getsignal(signum) not in (signal.SIG_IGN, None):
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def deliver(self) -> None:
        """Acts on the caught signal, if any, as the handler before this one would have.

        For the command: KeyboardInterrupt for Ctrl-C, its Terminated for
        SIGTERM; a default handler ends the process; one that only records, records.
        """
        handler = self._previous.get(self.signum)
        if callable(handler):
            handler(self.signum, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(self.signum)
