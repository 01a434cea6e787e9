"""Interactive figures that still show something when no browser is attached.

`interactive_figure` draws the default state as an ordinary image output (so papermill, nbval and
GitHub's viewer show a real figure) and shows ipywidgets controls above it; moving a control redraws
the same output in place. Without a front end nothing listens to the controls and the static figure
of the default state is what remains.
"""

from __future__ import annotations

import io
from typing import Callable

import matplotlib.pyplot as plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def interactive_figure(draw: Callable[..., "plt.Figure"], **controls):
    """Show controls and the figure that `draw(**values)` returns; redraw when a control moves.

    `controls` maps each keyword of `draw` to an ipywidgets control (its `.value` is the default).
    Returns the controls as a dict so a test (or a reader) can set `.value` and see the redraw.
    """
    import ipywidgets as widgets
    from IPython.display import Image, display

    if not controls:
        raise ValueError("interactive_figure needs at least one control, e.g. position=IntSlider(...)")
    for name, control in controls.items():
        if not isinstance(control, widgets.ValueWidget):
            raise TypeError(f"control {name}={control!r}: must be an ipywidgets value widget (slider, dropdown, ...)")

    def values():
        return {name: control.value for name, control in controls.items()}

    display(widgets.HBox(list(controls.values())))
    handle = display(Image(_png(draw(**values()))), display_id=True)

    def redraw(_change=None):
        handle.update(Image(_png(draw(**values()))))

    for control in controls.values():
        control.observe(redraw, names="value")
    return controls
