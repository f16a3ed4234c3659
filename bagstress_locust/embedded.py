"""The built-in simulated endpoint, started as a child process so it has its own core, not ours."""

from __future__ import annotations

import subprocess
import sys

__all__ = ["EmbeddedSimulator"]


class EmbeddedSimulator:
    """Starts ``python -m bagstress_locust.simulator`` on a free loopback port and stops it again.

    The child exits by itself when our stdin pipe closes, so it never outlives a killed parent.
    """

    def __init__(self, extra_args: list[str] | None = None) -> None:
        self._extra_args = extra_args or []
        self._process: subprocess.Popen[str] | None = None
        self.base_url: str | None = None

    def start(self) -> str:
        """Start the simulator and return its base URL (``http://127.0.0.1:PORT/v1``)."""
        command = [sys.executable, "-m", "bagstress_locust.simulator", "--port", "0", "--exit-on-stdin-eof"]
        self._process = subprocess.Popen(
            command + self._extra_args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.startswith("bagstress simulator listening on "):
            self.stop()
            raise RuntimeError(f"the built-in simulator did not start (it printed {line!r})")
        self.base_url = line.rsplit(" ", 1)[1]
        return self.base_url

    def stop(self) -> None:
        """Stop the child; safe to call more than once."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.communicate(timeout=5)  # also closes our ends of the pipes
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
