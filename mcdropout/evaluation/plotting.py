"""Figures on matplotlib's Agg canvas, and a clear error where matplotlib is not installed.

Plots are drawn on the Agg canvas directly (no pyplot, no display, no global state), so this works
on servers and from threads. matplotlib is the optional ``report`` extra (``pip install
'mcdropout[report]'``), imported only when a figure is made: the server and its image do without
it. Without it, :func:`new_figure` and :func:`require_plotting` raise
:class:`PlottingUnavailableError`, which names that install command.
"""

from __future__ import annotations

from typing import Any

from mcdropout.errors import MCDropoutError

FIGURE_INCHES = (6.0, 4.5)
DPI = 100
# What to run where matplotlib is missing.
INSTALL_HINT = "pip install 'mcdropout[report]'"


class PlottingUnavailableError(MCDropoutError, ImportError):
    """matplotlib, the ``report`` extra, is not installed (or does not import)."""


def require_plotting() -> None:
    """Check that plots can be drawn, before any long work whose results they would show.

    Raises:
        PlottingUnavailableError: matplotlib is missing; the message says how to install it.
    """
    _matplotlib()


def new_figure() -> tuple[Any, Any]:
    """A new figure of :data:`FIGURE_INCHES` with its Agg canvas attached, and its one axes.

    Raises:
        PlottingUnavailableError: matplotlib is missing.
    """
    figure_class, canvas_class = _matplotlib()
    fig = figure_class(figsize=FIGURE_INCHES, layout="tight")
    canvas_class(fig)
    return fig, fig.add_subplot()


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlottingUnavailableError(
            f"plots need matplotlib, which does not import here ({exc}); install the report "
            f"extra: {INSTALL_HINT}") from exc
    return Figure, FigureCanvasAgg
