"""Progress bars and status lines on stderr, switched off in one place."""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Iterator

from tqdm import tqdm

_enabled = True


def set_enabled(enabled: bool) -> None:
    """finsurg's bars, and the progress bars of transformers and huggingface_hub."""
    global _enabled
    _enabled = enabled
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    (enable_progress_bars if enabled else disable_progress_bars)()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()


def bar(**kwargs) -> tqdm:
    return tqdm(disable=not _enabled or None, **kwargs)


def say(text: str) -> None:
    if _enabled:
        tqdm.write(text, file=sys.stderr)


@contextlib.contextmanager
def silenced_stderr() -> Iterator[None]:
    """For libraries whose bars take no switch (lm-eval): they write to whatever sys.stderr is then."""
    if _enabled:
        yield
    else:
        with contextlib.redirect_stderr(io.StringIO()):
            yield


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds the block takes to timings[name]."""
    clock = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - clock
