"""The benchmarks behind `sonate bench`: they print figures and write JSON, Markdown and plots.

Also the look of the command line's tqdm progress bars, which the benchmarks and the long CLI jobs share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

BAR_FORMAT = "{desc} [{bar:30}] {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]"


def advance(bar: tqdm, done: int, total: int, note: str = "") -> None:
    """Move `bar` to `done` of `total` with `note` after it: what a job's progress callback reports."""
    bar.total = total
    bar.set_postfix_str(note, refresh=False)
    bar.update(done - bar.n)
