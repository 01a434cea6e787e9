"""Interactive figures show a static image of the default state and redraw it when a control moves."""

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest
from IPython.display import Image

from slmbook import widgets as slm_widgets


class Recorder:
    """Stands in for IPython's display(): records what would be shown and the updates of a handle."""

    def __init__(self):
        self.shown, self.updates = [], []

    def __call__(self, obj, display_id=None):
        self.shown.append(obj)
        recorder = self

        class Handle:
            def update(self, new):
                recorder.updates.append(new)

        return Handle() if display_id else None


def draw(angle):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, angle], [0, 1])
    ax.set_title(f"angle {angle}")
    return fig


def test_static_image_first_then_redraw_on_change(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr("IPython.display.display", recorder)
    controls = slm_widgets.interactive_figure(draw, angle=widgets.IntSlider(value=1, min=0, max=5))
    images = [o for o in recorder.shown if isinstance(o, Image)]
    assert len(images) == 1 and images[0].data[:8] == b"\x89PNG\r\n\x1a\n"
    controls["angle"].value = 4
    assert len(recorder.updates) == 1 and recorder.updates[0].data != images[0].data


def test_controls_must_be_value_widgets():
    with pytest.raises(TypeError, match="control angle=3"):
        slm_widgets.interactive_figure(draw, angle=3)
    with pytest.raises(ValueError, match="at least one control"):
        slm_widgets.interactive_figure(draw)
