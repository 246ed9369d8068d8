"""Terminal progress for the CLIs: ``(message, fraction)`` callbacks shown as tqdm bars.

Library code reports progress as ``progress(message, fraction)`` with fractions rising from
0 to 1 within a stage (download, checksum, conversion, load). Here each stage gets its own
bar on stderr: a fraction below the previous one, or a finished bar, starts the next stage.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


class StageBars:
    """A :data:`explain.packs.Progress` callback drawing one tqdm bar per stage."""

    def __init__(self, file: TextIO | None = None) -> None:
        self.file = file or sys.stderr
        self.bar: tqdm | None = None
        self.last = 0.0

    def __call__(self, message: str, fraction: float) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if self.bar is None or fraction < self.last:
            self.close()
            self.bar = tqdm(
                total=100,
                file=self.file,
                bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed}]",
                dynamic_ncols=True,
                leave=True,
            )
        self.bar.set_description_str(message, refresh=False)
        self.bar.n = round(fraction * 100, 1)
        self.bar.refresh()
        self.last = fraction
        if fraction >= 1.0:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.last = 0.0
