"""The ``flotilla`` command: the group of :mod:`main` with the commands of
:mod:`cluster` and :mod:`mesh` registered (importing them registers them),
``--log-level`` on every one, and a quiet end when the reader of its output
goes away."""

from __future__ import annotations

import os
import sys
from typing import Any

from controlplane.cli import cluster, mesh  # noqa: F401  (registers their commands)
from controlplane.cli.main import cli, with_log_level


class _WatchedStdout:
    """sys.stdout, noting whether its reader went away (EPIPE): click and rich
    each turn that into exit 1, which fails `flotilla get ... | head -1` under
    `set -o pipefail`."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            self.reader_gone = True
            raise

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self.reader_gone = True
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main() -> None:
    with_log_level(cli)

    watched = _WatchedStdout(sys.stdout)
    sys.stdout = watched
    try:
        cli(prog_name="flotilla")
    except SystemExit:
        if not watched.reader_gone:
            raise
        # The reader has what it wanted: done, quietly, as kubectl is; what is
        # still buffered goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), watched.fileno())
        raise SystemExit(0) from None
