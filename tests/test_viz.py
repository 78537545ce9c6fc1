"""Figures, the mask-overlay video and the optional viewer."""

from __future__ import annotations

import io
import sys
import types

import cv2
import numpy as np
import pytest
from browser.media import read_video_frames
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
    assert cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS) == pytest.approx(rec.fps)
    frames = read_video_frames(path)
    assert len(frames) == rec.num_frames
    for t, frame in enumerate(frames):
        assert frame.shape == (32, 48, 3)
        # Lossy codec: compare region means. The masked block is pushed towards red.
        diff = frame.astype(float) - rec.images[t].astype(float)
        m = rec.masks[t]
        assert diff[m][:, 0].mean() > 30 and diff[m][:, 1].mean() < -30
        assert np.abs(diff[~m]).mean() < 15


def test_webm_preview_video(rec, tmp_path):
    frames = read_video_frames(viz.mask_overlay_video(rec, tmp_path / "masks.webm"))
    assert len(frames) == rec.num_frames and frames[0].shape == (32, 48, 3)
    diff = frames[1].astype(float) - rec.images[1].astype(float)
    assert diff[rec.masks[1]][:, 0].mean() > 30
    with pytest.raises(Easi3RInputError, match=r"\.mp4 or \.webm"):
        viz.mask_overlay_video(rec, tmp_path / "masks.avi")


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
    """A viser GUI/scene handle stand-in: assigning ``value`` runs the update callbacks, as viser does."""

    def __init__(self, **kw):
        self.callbacks = []
        self.visible = True
        self.__dict__.update(kw)

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        if name == "value" and "callbacks" in self.__dict__:
            for fn in self.callbacks:
                fn(None)

    def on_update(self, fn):
        self.callbacks.append(fn)
        return fn


class _Scene:
    def __init__(self):
        self.nodes = {}

    def add_point_cloud(self, name, points, colors, point_size):
        self.nodes[name] = _Handle(name=name, points=points, colors=colors, point_size=point_size)
        return self.nodes[name]

    def add_camera_frustum(self, name, fov, aspect, scale, image, wxyz, position):
        self.nodes[name] = _Handle(name=name, fov=fov, aspect=aspect, wxyz=wxyz, position=position)
        return self.nodes[name]

    def add_line_segments(self, name, points, colors):
        self.nodes[name] = _Handle(name=name, points=points)
        return self.nodes[name]


class _Gui:
    def __init__(self):
        self.inputs = {}

    def add_slider(self, label, min, max, step, initial_value):
        self.inputs[label] = _Handle(value=initial_value, min=min, max=max)
        return self.inputs[label]

    def add_checkbox(self, label, initial_value):
        self.inputs[label] = _Handle(value=initial_value)
        return self.inputs[label]

    def add_markdown(self, content):
        self.inputs["markdown"] = _Handle(content=content)
        return self.inputs["markdown"]


class _Server:
    def __init__(self, host, port, verbose):
        self.host, self.port, self.scene, self.gui, self.stopped = host, port, _Scene(), _Gui(), False

    def stop(self):
        self.stopped = True


def test_view_with_a_stand_in_server(rec, monkeypatch):
    """The viewer's calls against a minimal stand-in of viser's API (the real package is optional)."""
    monkeypatch.setitem(sys.modules, "viser", types.SimpleNamespace(ViserServer=_Server))
    viewer = viz.view(rec, port=1234, block=False, max_points_per_frame=100, conf_threshold=1.25)
    server, nodes, gui = viewer.server, viewer.server.scene.nodes, viewer.server.gui.inputs
    assert (server.host, server.port) == ("127.0.0.1", 1234)
    assert len(viewer.static_clouds) == len(viewer.dynamic_clouds) == len(viewer.cameras) == rec.num_frames
    # Frame 1's clouds: the subset's confident pixels, split by the mask, with their world points and colours.
    idx = viz.frame_point_subsets(rec, 100)[1]
    assert len(idx) == 100
    conf = rec.confidence[1].reshape(-1)[idx] > 1.25
    dyn = rec.masks[1].reshape(-1)[idx]
    static, dynamic = nodes["/frames/00001/static"], nodes["/frames/00001/dynamic"]
    np.testing.assert_array_equal(static.points, rec.points[1].reshape(-1, 3)[idx[conf & ~dyn]])
    np.testing.assert_array_equal(dynamic.colors, rec.images[1].reshape(-1, 3)[idx[conf & dyn]])
    f = nodes["/frames/00001/camera"]
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
    segments = nodes["/trajectory"].points
    assert segments.shape == (3, 2, 3)
    np.testing.assert_allclose(segments[2, 1], rec.cam2world[3, :3, 3], rtol=1e-6)

    def shown(clouds):
        return [c.visible for c in clouds]

    # Only the slider's frame is visible; moving the slider moves the visible clouds and the readout.
    assert shown(viewer.static_clouds) == shown(viewer.dynamic_clouds) == [True, False, False, False]
    assert gui["markdown"].content == "frame 0 / 3: frame_00.png"
    gui["frame"].value = 2
    assert viewer.frame == 2 and shown(viewer.static_clouds) == [False, False, True, False]
    assert gui["markdown"].content == "frame 2 / 3: frame_02.png"
    assert shown(viewer.cameras) == [True, True, True, False]  # cameras up to the current frame
    gui["dynamic points (masks)"].value = False
    assert shown(viewer.dynamic_clouds) == [False] * 4 and shown(viewer.static_clouds) == [False, False, True, False]
    gui["all frames"].value = True
    assert all(shown(viewer.static_clouds)) and not any(shown(viewer.dynamic_clouds))
    gui["cameras and trajectory"].value = False
    assert not any(shown(viewer.cameras)) and not nodes["/trajectory"].visible
    # The threshold slider re-filters: above every confidence nothing is left.
    gui["confidence >"].value = 2.0
    assert len(static.points) == 0 and len(dynamic.points) == 0
    gui["confidence >"].value = 0.0
    assert len(static.points) + len(dynamic.points) == 100
    gui["point size"].value = 0.05
    assert {c.point_size for c in viewer.static_clouds + viewer.dynamic_clouds} == {0.05}
    # One playback tick advances the frame and wraps at the end.
    viewer.step()
    assert viewer.frame == 3
    viewer.step()
    assert viewer.frame == 0
    viewer.close()
    assert server.stopped


def test_view_rejects_bad_settings(rec, monkeypatch):
    monkeypatch.setitem(sys.modules, "viser", types.SimpleNamespace(ViserServer=_Server))
    with pytest.raises(Easi3RInputError, match="point_size"):
        viz.view(rec, block=False, point_size=0)
    with pytest.raises(Easi3RInputError, match="max_points_per_frame"):
        viz.view(rec, block=False, max_points_per_frame=0)


def test_frame_point_subsets_keep_finite_points():
    r = make_reconstruction(T=2, H=16, W=16, h=1, w=1)
    r.points[0, 0, :3] = np.nan
    sub = viz.frame_point_subsets(r, 1000)
    np.testing.assert_array_equal(sub[0], np.arange(3, 256))
    np.testing.assert_array_equal(sub[1], np.arange(256))
    small = viz.frame_point_subsets(r, 10, seed=3)
    assert [len(s) for s in small] == [10, 10] and all(np.all(np.diff(s) > 0) for s in small)
    np.testing.assert_array_equal(small[1], viz.frame_point_subsets(r, 10, seed=3)[1])


def test_trajectory_plot(rec):
    fig = viz.trajectory_plot(rec)
    top, side = fig.axes[:2]
    assert [top.get_title(), side.get_title()] == ["top view (x, z)", "side view (z, -y)"]
    c = rec.cam2world[:, :3, 3]
    np.testing.assert_allclose(top.collections[0].get_offsets(), c[:, [0, 2]])
    np.testing.assert_allclose(side.collections[0].get_offsets(), np.stack([c[:, 2], -c[:, 1]], 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")
