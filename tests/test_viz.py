"""Figures, the mask-overlay video and the optional viewer."""

from __future__ import annotations

import io
import sys
import types

import cv2
import numpy as np
import pytest
from helpers.reconstruction import make_reconstruction
from matplotlib.figure import Figure

from easi3r import viz
from easi3r.errors import Easi3RInputError
from easi3r.export.atomic import is_temp_name
from easi3r.export.images import ATTENTION_PANELS


@pytest.fixture(scope="module")
def rec():
    return make_reconstruction(T=4, H=32, W=48, h=2, w=3)


def test_attention_grid_axes_and_titles(rec):
    fig = viz.attention_grid(rec)
    assert isinstance(fig, Figure) and len(fig.axes) == 4 * 6
    assert [ax.get_title() for ax in fig.axes[:6]] == list(ATTENTION_PANELS)
    # Row 2 / column 4 shows frame 2's dynamic map, upsampled to the frame size.
    shown = fig.axes[2 * 6 + 4].images[0].get_array()
    assert shown.shape == (32, 48)
    np.testing.assert_array_equal(shown[::16, ::16], rec.dynamic_maps[2])
    first = fig.axes[0].images[0].get_array()[0, 0]
    np.testing.assert_allclose(first, 1 - rec.attention["src_mean"][0, 0, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")

    sub = viz.attention_grid(rec, frames=[0, -1])
    assert len(sub.axes) == 2 * 6
    np.testing.assert_array_equal(sub.axes[6 + 4].images[0].get_array()[::16, ::16], rec.dynamic_maps[3])
    with pytest.raises(Easi3RInputError, match="frames"):
        viz.attention_grid(rec, frames=[4])


def test_mask_overlay_video(rec, tmp_path):
    path = viz.mask_overlay_video(rec, tmp_path / "masks.mp4")
    assert path.exists() and not [p for p in tmp_path.iterdir() if is_temp_name(p.name)]
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(rec.fps)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    cap.release()
    assert len(frames) == rec.num_frames
    for t, frame in enumerate(frames):
        assert frame.shape == (32, 48, 3)
        # Lossy codec: compare region means. The masked block is pushed towards red.
        diff = frame.astype(float) - rec.images[t].astype(float)
        m = rec.masks[t]
        assert diff[m][:, 0].mean() > 30 and diff[m][:, 1].mean() < -30
        assert np.abs(diff[~m]).mean() < 15


def test_video_fps_default_and_override(rec, tmp_path):
    rec24 = make_reconstruction(T=2, fps=None)
    p = viz.mask_overlay_video(rec24, tmp_path / "a.mp4")
    assert cv2.VideoCapture(str(p)).get(cv2.CAP_PROP_FPS) == pytest.approx(24.0)
    p = viz.mask_overlay_video(rec24, tmp_path / "b.mp4", fps=5)
    assert cv2.VideoCapture(str(p)).get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)


def test_view_without_viser_names_the_extra(rec, monkeypatch):
    monkeypatch.setitem(sys.modules, "viser", None)  # makes `import viser` raise ImportError
    with pytest.raises(ImportError, match=r"pip install easi3r\[viz\]"):
        viz.view(rec)


class _Handle:
    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.visible = True
        self.callbacks = []

    def on_update(self, fn):
        self.callbacks.append(fn)
        return fn


def test_view_with_a_stand_in_server(rec, monkeypatch):
    """The viewer's calls against a minimal stand-in of viser's API (the real package is optional)."""
    calls = {"clouds": [], "frusta": []}

    class Scene:
        def add_point_cloud(self, name, points, colors, point_size):
            h = _Handle(name=name, points=points, colors=colors)
            calls["clouds"].append(h)
            return h

        def add_camera_frustum(self, name, fov, aspect, scale, image, wxyz, position):
            calls["frusta"].append(_Handle(name=name, fov=fov, aspect=aspect, wxyz=wxyz, position=position))

    class Gui:
        def add_slider(self, label, min, max, step, initial_value):
            self.slider = _Handle(value=initial_value, max=max)
            return self.slider

        def add_checkbox(self, label, initial_value):
            self.checkbox = _Handle(value=initial_value)
            return self.checkbox

    class Server:
        def __init__(self, port):
            self.port, self.scene, self.gui = port, Scene(), Gui()

    monkeypatch.setitem(sys.modules, "viser", types.SimpleNamespace(ViserServer=Server))
    server = viz.view(rec, port=1234, block=False, max_points_per_frame=100)
    assert server.port == 1234 and len(calls["clouds"]) == len(calls["frusta"]) == rec.num_frames
    assert all(len(c.points) <= 100 for c in calls["clouds"])
    f = calls["frusta"][1]
    np.testing.assert_allclose(f.position, rec.cam2world[1, :3, 3])
    w, x, y, z = f.wxyz
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    np.testing.assert_allclose(R, rec.cam2world[1, :3, :3], atol=1e-9)
    np.testing.assert_allclose(f.fov, 2 * np.arctan(16 / 41.0))
    # Only the slider's frame is visible; moving the slider moves the visible cloud.
    assert [c.visible for c in calls["clouds"]] == [True, False, False, False]
    server.gui.slider.value = 2
    server.gui.slider.callbacks[0](None)
    assert [c.visible for c in calls["clouds"]] == [False, False, True, False]
    server.gui.checkbox.value = True
    server.gui.checkbox.callbacks[0](None)
    assert all(c.visible for c in calls["clouds"])
