"""Progress bars for long loops (tqdm: a rate, an ETA, and silence when asked).

The library only draws bars when the caller asks (`progress=True`, as the CLI
does); tests and API users get no output. tqdm is used rather than a hand-made bar
because it handles terminals, pipes and notebooks correctly and shows the rate.
"""
from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(total: int | None, description: str, *, enabled: bool, unit: str = "sample") -> tqdm:
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        unit_scale=True,
        dynamic_ncols=True,
        leave=False,
        disable=not enabled,
    )
