"""Still images given as videos (a PNG/JPEG, correctly named or renamed .mp4/.avi as in eval datasets)
are refused with ImageNotVideoError naming the file; they are detected by content, never by name."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from video_helpers import decord_installed

from videosparse.video import (
    ImageNotVideoError,
    NotAVideoError,
    VideoError,
    iter_chunks,
    load_video,
    probe_video,
)
from videosparse.video.synth import pattern_frame

BACKENDS = ["auto", "pyav"] + (["decord"] if decord_installed() else [])
# name -> (written by Pillow as, kind named in the error)
IMAGES = {
    "photo.png": ("PNG", "PNG"),
    "photo.jpg": ("JPEG", "JPEG"),
    "png_renamed.mp4": ("PNG", "PNG"),
    "png_renamed.avi": ("PNG", "PNG"),
    "jpeg_renamed.mp4": ("JPEG", "JPEG"),
    "jpeg_renamed.avi": ("JPEG", "JPEG"),
    "photo.bmp": ("BMP", "BMP"),
    "photo.webp": ("WEBP", "WebP"),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    img = Image.fromarray(pattern_frame(3, 48, 64))
    out = {}
    for name, (fmt, _) in IMAGES.items():
        out[name] = str(d / name)
        img.save(out[name], format=fmt)
    # two JPEGs back to back: FFmpeg reads them as a 2-picture JPEG pipe, i.e. a (tiny) MJPEG video
    a, b = d / "a.jpg", d / "b.jpg"
    img.save(a, format="JPEG")
    Image.fromarray(pattern_frame(9, 48, 64)).save(b, format="JPEG")
    out["two_jpegs.mjpeg"] = str(d / "two_jpegs.mjpeg")
    with open(out["two_jpegs.mjpeg"], "wb") as f:
        f.write(a.read_bytes() + b.read_bytes())
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_is_not_a_video(images, name, backend):
    path, kind = images[name], IMAGES[name][1]
    with pytest.raises(ImageNotVideoError) as info:
        load_video(path, 8, backend=backend)
    err = info.value
    assert isinstance(err, NotAVideoError) and isinstance(err, VideoError)
    assert err.path == path and str(err).startswith(path + ": ")
    assert f"is a {kind} image, not a video" in str(err)
    assert "\n" not in str(err)
    with pytest.raises(ImageNotVideoError):
        probe_video(path, backend=backend)
    with pytest.raises(ImageNotVideoError):
        list(iter_chunks(path, 4, backend=backend))


def test_image_error_pickles(images):
    with pytest.raises(ImageNotVideoError) as info:
        load_video(images["png_renamed.mp4"])
    e = pickle.loads(pickle.dumps(info.value))
    assert type(e) is ImageNotVideoError and str(e) == str(info.value)


def test_several_pictures_are_a_video(images, media):
    clip = load_video(images["two_jpegs.mjpeg"], num_frames=None)
    assert clip.num_source_frames == 2 and clip.frames.shape == (2, 48, 64, 3)
    assert np.abs(clip.frames[0].astype(int) - pattern_frame(3, 48, 64)).mean() < 8
    assert np.abs(clip.frames[1].astype(int) - pattern_frame(9, 48, 64)).mean() < 8
    # animated GIFs remain videos (single-frame GIFs too: see the corpus' morph6.gif)
    assert load_video(media["pil_gif"], num_frames=None).num_source_frames == 6
