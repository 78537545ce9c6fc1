"""load_frames: bit-exact official preprocessing, every source kind, videos, conversions and errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from easi3r.errors import Easi3RInputError
from easi3r.frames import Frames, load_frames, processed_size

REF = Path(__file__).parent / "data" / "reference"
FRAME_FILES = sorted((REF / "frames").glob("frame_0*.png"))


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(REF / "preprocess.npz") as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def ref_frames() -> Frames:
    return load_frames(FRAME_FILES)


@pytest.fixture(scope="module")
def raw_rgb() -> np.ndarray:
    """(6, 120, 160, 3) uint8: the fixture PNGs decoded."""
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in FRAME_FILES])


def _one_line_naming(err: pytest.ExceptionInfo, name: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert name in msg, msg


# ----------------------------------------------------------------------------------------------------- golden


def test_reference_frames_bit_exact(ref_frames: Frames, golden: dict[str, np.ndarray]) -> None:
    assert len(ref_frames) == 6
    assert ref_frames.images.dtype == torch.float32 and ref_frames.images.device.type == "cpu"
    assert tuple(ref_frames.images.shape) == (6, 3, 384, 512)
    assert np.abs(ref_frames.images.numpy() - golden["img"]).max() == 0.0
    assert ref_frames.true_shape.dtype == torch.int64
    np.testing.assert_array_equal(ref_frames.true_shape.numpy(), golden["true_shape"])
    assert ref_frames.size == (384, 512)
    assert ref_frames.names == [f"frame_{k:02d}.png" for k in range(6)]
    assert ref_frames.original_sizes == [(160, 120)] * 6
    assert ref_frames.fps is None


def test_portrait_bit_exact(golden: dict[str, np.ndarray]) -> None:
    f = load_frames(REF / "frames" / "portrait.png")
    assert tuple(f.images.shape) == (1, 3, 512, 384)
    assert np.abs(f.images.numpy() - golden["portrait_img"]).max() == 0.0
    np.testing.assert_array_equal(f.true_shape.numpy(), golden["portrait_true_shape"])
    assert f.original_sizes == [(120, 160)]


def test_rgb_is_the_exact_uint8_behind_images(ref_frames: Frames) -> None:
    rgb = ref_frames.rgb
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 384, 512, 3)
    back = np.round((ref_frames.images.permute(0, 2, 3, 1).numpy() * 0.5 + 0.5) * 255)
    np.testing.assert_array_equal(back, rgb)


# ---------------------------------------------------------------------------------------------- source kinds


def test_all_source_kinds_agree(ref_frames: Frames, raw_rgb: np.ndarray, tmp_path: Path) -> None:
    folder = tmp_path / "seq"
    folder.mkdir()
    # Copy in reverse so directory order differs from name order; add files that must be ignored.
    for p in reversed(FRAME_FILES):
        shutil.copy(p, folder / p.name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub.png").mkdir()
    sources = {
        "folder": folder,
        "folder-str": str(folder),
        "paths-tuple": tuple(str(p) for p in FRAME_FILES),
        "array": raw_rgb,
        "array-list": list(raw_rgb),
        "pil-list": [Image.fromarray(a) for a in raw_rgb],
    }
    for kind, src in sources.items():
        f = load_frames(src)
        assert torch.equal(f.images, ref_frames.images), kind
        np.testing.assert_array_equal(f.rgb, ref_frames.rgb)
        assert f.original_sizes == [(160, 120)] * 6, kind
    assert load_frames(folder).names == ref_frames.names
    assert load_frames(raw_rgb).names == [f"array_{i}" for i in range(6)]
    assert load_frames([Image.open(p) for p in FRAME_FILES]).names == ref_frames.names
    assert load_frames(ref_frames) is ref_frames


def test_single_frame_sources(ref_frames: Frames, raw_rgb: np.ndarray) -> None:
    for src in (raw_rgb[2], Image.fromarray(raw_rgb[2]), FRAME_FILES[2]):
        f = load_frames(src)
        assert len(f) == 1
        assert torch.equal(f.images[0], ref_frames.images[2])


def test_max_frames_on_images(ref_frames: Frames) -> None:
    f = load_frames(REF / "frames", max_frames=3)  # portrait.png sorts last and is never reached
    assert f.names == ref_frames.names[:3]
    assert torch.equal(f.images, ref_frames.images[:3])


# --------------------------------------------------------------------------------------------- geometry rules


@pytest.mark.parametrize(
    ("wh", "hw"),
    [
        ((1920, 1080), (288, 512)),
        ((854, 480), (288, 512)),
        ((640, 480), (384, 512)),
        ((480, 640), (512, 384)),
        ((1000, 1000), (384, 512)),
        ((500, 333), (336, 512)),
        ((3024, 4032), (512, 384)),
    ],
)
def test_processed_size_spec_examples(wh: tuple[int, int], hw: tuple[int, int]) -> None:
    assert processed_size(*wh) == hw


def test_downscale_lanczos_and_square_crop() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    f = load_frames(arr)
    # 1000 > 512: LANCZOS to 512x512, then the square -> 4:3 rule crops rows 64..447.
    expected = np.asarray(Image.fromarray(arr).resize((512, 512), Image.Resampling.LANCZOS))[64:448]
    np.testing.assert_array_equal(f.rgb[0], expected)


def test_size_224_short_side_and_square_crop() -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    f = load_frames(arr, image_size=224)
    # Long edge round(224 * 4/3) = 299 -> 299x224 (LANCZOS: shrinking); centred square cx=149: cols 37..260
    resized = np.asarray(Image.fromarray(arr).resize((299, 224), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(f.rgb[0], resized[:, 37:261])
    assert f.size == (224, 224)


def test_exif_orientation_is_applied(tmp_path: Path, raw_rgb: np.ndarray) -> None:
    img = Image.fromarray(raw_rgb[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    f = load_frames(path)
    assert f.original_sizes == [(120, 160)] and f.size == (512, 384)
    decoded = np.asarray(Image.open(path).convert("RGB"))  # raw pixels, orientation not applied
    expected = load_frames(np.ascontiguousarray(np.rot90(decoded, k=-1)))  # 90 deg clockwise
    assert torch.equal(f.images, expected.images)


# ------------------------------------------------------------------------------------------------ conversions


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 4 + y * 2) % 256).astype(np.uint8)


def test_grayscale_png_becomes_grey_rgb(tmp_path: Path) -> None:
    g = _gradient()
    Image.fromarray(g).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "L"
    f = load_frames(tmp_path / "g.png")
    expected = load_frames(np.repeat(g[..., None], 3, axis=2))
    assert torch.equal(f.images, expected.images)
    assert np.array_equal(f.rgb[..., 0], f.rgb[..., 2])


def test_rgba_png_drops_alpha_like_official(tmp_path: Path) -> None:
    rgb = np.stack([_gradient(), 255 - _gradient(), np.full((48, 64), 77, np.uint8)], axis=-1)
    alpha = (np.arange(64, dtype=np.uint8)[None, :] * 4).repeat(48, axis=0)  # 0 = fully transparent
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "a.png")
    f = load_frames(tmp_path / "a.png")
    # convert("RGB") keeps the colour channels whatever the alpha (no compositing).
    assert torch.equal(f.images, load_frames(rgb).images)


def test_palette_png(tmp_path: Path) -> None:
    rgb = np.stack([_gradient(), _gradient()[::-1], np.full((48, 64), 200, np.uint8)], axis=-1)
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    expected = np.asarray(pal.convert("RGB"))
    assert torch.equal(load_frames(tmp_path / "p.png").images, load_frames(expected).images)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    g8 = _gradient()
    v16 = g8.astype(np.uint16) * 257 + (np.arange(64, dtype=np.uint16) % 100)[None, :]  # sub-step noise
    path = tmp_path / "g16.png"
    Image.fromarray(v16).save(path)
    assert Image.open(path).mode.startswith("I")
    f = load_frames(path)
    expected8 = np.round(v16 / 257.0).astype(np.uint8)
    assert torch.equal(f.images, load_frames(np.repeat(expected8[..., None], 3, axis=2)).images)
    # The official convert("RGB") would have clipped almost everything to 255.
    assert f.rgb.mean() < 200


# ---------------------------------------------------------------------------------------------------- videos


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, raw_rgb: np.ndarray) -> tuple[Path, np.ndarray]:
    """A 10-frame MJPG .avi at 10 fps and its frames as OpenCV decodes them (RGB)."""
    seq = np.concatenate([raw_rgb, raw_rgb[4:0:-1]])  # 0..5, 4..1: every frame differs from its neighbours
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    assert writer.isOpened()
    for rgb in seq:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    cap = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    assert len(decoded) == 10
    return path, np.stack(decoded)


@pytest.mark.parametrize(
    ("fps", "max_frames", "indices", "out_fps"),
    [
        (None, None, list(range(10)), 10.0),
        (5, None, [0, 2, 4, 6, 8], 5.0),
        (3, None, [0, 3, 6, 9], 10 / 3),
        (20, None, list(range(10)), 10.0),  # max(1, round(0.5)) = 1
        (5, 3, [0, 2, 4], 5.0),
        (None, 1, [0], 10.0),
    ],
)
def test_video_subsampling(
    video: tuple[Path, np.ndarray],
    fps: float | None,
    max_frames: int | None,
    indices: list[int],
    out_fps: float,
) -> None:
    path, decoded = video
    f = load_frames(path, fps=fps, max_frames=max_frames)
    assert f.names == [f"frame_{i:05d}" for i in indices]
    assert f.fps == pytest.approx(out_fps)
    assert f.original_sizes == [(160, 120)] * len(indices)
    assert torch.equal(f.images, load_frames(decoded[indices]).images)


def test_video_matches_official_seek_then_read(video: tuple[Path, np.ndarray]) -> None:
    path, _ = video
    cap = cv2.VideoCapture(str(path))
    official = []
    for i in range(0, 10, 3):  # fps=3 -> interval 3, each index read after a seek, as the official loader
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, bgr = cap.read()
        assert ok
        official.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    assert torch.equal(load_frames(path, fps=3).images, load_frames(np.stack(official)).images)


# ---------------------------------------------------------------------------------------------------- errors


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(Easi3RInputError) as e:
        load_frames(tmp_path / "nope")
    _one_line_naming(e, "nope")
    with pytest.raises(Easi3RInputError) as e:
        load_frames([FRAME_FILES[0], tmp_path / "gone.png"])
    _one_line_naming(e, "gone.png")


def test_empty_folder_and_folder_without_images(tmp_path: Path) -> None:
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(Easi3RInputError) as e:
        load_frames(empty)
    _one_line_naming(e, "empty_dir")
    (empty / "readme.txt").write_text("x")
    with pytest.raises(Easi3RInputError) as e:
        load_frames(empty)
    _one_line_naming(e, "empty_dir")
    with pytest.raises(Easi3RInputError):
        load_frames([])


def test_corrupt_jpeg(tmp_path: Path, raw_rgb: np.ndarray) -> None:
    good = tmp_path / "good.jpg"
    Image.fromarray(raw_rgb[0]).save(good, quality=90)
    data = good.read_bytes()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(Easi3RInputError) as e:
        load_frames([good, bad])
    _one_line_naming(e, "broken.jpg")
    with pytest.raises(Easi3RInputError) as e:
        load_frames([Image.open(bad)])  # lazily opened PIL image: decoding fails inside load_frames
    _one_line_naming(e, "broken.jpg")
    notimg = tmp_path / "text.png"
    notimg.write_bytes(b"this is not a png")
    with pytest.raises(Easi3RInputError) as e:
        load_frames(notimg)
    _one_line_naming(e, "text.png")


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 200])
def test_unreadable_video(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "clip_bad.mp4"
    path.write_bytes(content)
    with pytest.raises(Easi3RInputError) as e:
        load_frames(path)
    _one_line_naming(e, "clip_bad.mp4")


def test_too_small_images(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(Easi3RInputError) as e:
        load_frames(tmp_path / "tiny.png")
    _one_line_naming(e, "tiny.png")
    # Large enough in pixels, but 2000x16 -> 512x4 after resizing: no complete 16-px patch row.
    Image.fromarray(np.zeros((16, 2000, 3), np.uint8)).save(tmp_path / "sliver.png")
    with pytest.raises(Easi3RInputError) as e:
        load_frames(tmp_path / "sliver.png")
    _one_line_naming(e, "sliver.png")


def test_mixed_sizes_name_both_files() -> None:
    with pytest.raises(Easi3RInputError) as e:
        load_frames(REF / "frames")  # six landscape frames + portrait.png
    _one_line_naming(e, "frame_00.png")
    assert "portrait.png" in str(e.value)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 32, 32, 3), np.float32),
        np.zeros((2, 32, 32, 4), np.uint8),
        np.zeros((32, 32), np.uint8),
        [np.zeros((32, 32, 3), np.uint16)],
        [42],
    ],
)
def test_bad_arrays(bad: object) -> None:
    with pytest.raises(Easi3RInputError) as e:
        load_frames(bad)
    assert "\n" not in str(e.value)


def test_bad_options_and_types(tmp_path: Path) -> None:
    with pytest.raises(Easi3RInputError):
        load_frames(FRAME_FILES, max_frames=0)
    with pytest.raises(Easi3RInputError):
        load_frames(FRAME_FILES, fps=-1)
    with pytest.raises(Easi3RInputError):
        load_frames(FRAME_FILES, image_size=8)
    with pytest.raises(Easi3RInputError):
        load_frames(12345)
    other = tmp_path / "anim.gif"
    other.write_bytes(b"GIF89a")
    with pytest.raises(Easi3RInputError) as e:
        load_frames(other)
    _one_line_naming(e, "anim.gif")


def test_frames_fields_are_validated(ref_frames: Frames) -> None:
    with pytest.raises(Easi3RInputError, match="Frames.rgb"):
        Frames(
            ref_frames.images, ref_frames.true_shape, ref_frames.names, ref_frames.original_sizes, ref_frames.rgb[1:]
        )
    with pytest.raises(Easi3RInputError, match="Frames.names"):
        Frames(
            ref_frames.images, ref_frames.true_shape, ref_frames.names[:2], ref_frames.original_sizes, ref_frames.rgb
        )


# ----------------------------------------------------------------------------------------------------- no-crop


def test_no_crop_records_the_flag_and_matches_crop_when_sizes_divide(ref_frames: Frames) -> None:
    # 160x120 -> 512x384 is already a multiple of 16: the second (LANCZOS) resize is a no-op, as officially.
    frames = load_frames(FRAME_FILES, crop=False)
    assert frames.crop is False and ref_frames.crop is True
    np.testing.assert_array_equal(frames.rgb, ref_frames.rgb)


def test_no_crop_keeps_all_content(tmp_path: Path) -> None:
    """500x333 -> 512x341: crop=True cuts rows 2..337 (3 lost rows at the bottom, 2 at the top); crop=False
    squeezes all 341 rows into 336, so the marks of the first and last rows survive."""
    img = np.full((333, 500, 3), 128, np.uint8)
    img[:1] = (255, 0, 0)  # red top row
    img[-1:] = (0, 0, 255)  # blue bottom row
    Image.fromarray(img).save(tmp_path / "f.png")
    squeezed = load_frames(tmp_path / "f.png", crop=False).rgb[0]
    cropped = load_frames(tmp_path / "f.png").rgb[0]
    assert squeezed.shape == cropped.shape == (336, 512, 3)
    assert squeezed[0, :, 0].min() > 200 and squeezed[-1, :, 2].min() > 200
    assert cropped[:, :, 0].max() == 128 and cropped[:, :, 2].max() == 128  # the marks were cropped away


def test_no_crop_option_is_validated(tmp_path: Path) -> None:
    with pytest.raises(Easi3RInputError, match="crop"):
        load_frames(FRAME_FILES, crop="no")  # type: ignore[arg-type]


@pytest.mark.parametrize("crop", [True, False])
def test_elongated_frame_is_refused_at_load_time(tmp_path: Path, crop: bool) -> None:
    """2000x100 -> 512x26 -> 512x16 after the crop: one patch row, which the encoder cannot use (grid >= 2)."""
    Image.fromarray(np.zeros((100, 2000, 3), np.uint8)).save(tmp_path / "banner.png")
    with pytest.raises(Easi3RInputError) as e:
        load_frames(tmp_path / "banner.png", crop=crop)
    _one_line_naming(e, "banner.png")
    assert "2000x100" in str(e.value) and "512x16" in str(e.value)
    # 2000x130 -> 512x33 -> 512x32: two patch rows, accepted.
    Image.fromarray(np.zeros((130, 2000, 3), np.uint8)).save(tmp_path / "wide.png")
    assert load_frames(tmp_path / "wide.png", crop=crop).size == (32, 512)
