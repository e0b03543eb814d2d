"""Figures without pyplot: matplotlib's object-oriented API, so that building or saving a figure never
changes the caller's backend or pyplot's global figure list (STYLE: never change what the caller handed
you). One home for every package (probes, interventions, analyses)."""
from __future__ import annotations

import io

from matplotlib.figure import Figure


class InlineFigure(Figure):
    """A :class:`~matplotlib.figure.Figure` that Jupyter shows as a PNG even when pyplot
    was never imported (IPython registers its figure formatter only once pyplot is used)."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(6.4, 4.8), squeeze: bool = True):
    """``(figure, axes)`` as pyplot's ``subplots`` gives them, without pyplot and its global state."""
    fig = InlineFigure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)
