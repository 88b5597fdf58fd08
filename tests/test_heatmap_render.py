"""Heatmap text rendering (spaces, wrapping, non-ASCII, edges) and a real test-bed trace's JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from videosparse import heatmap
from videosparse.video import VideoProcessorSpec

from test_heatmap import T, assert_tables_equal, assert_traces_equal, make_trace

SPEC = VideoProcessorSpec(shortest_edge=32, crop_size=32)


def ink_columns(img: np.ndarray, thresh: int = 160) -> np.ndarray:
    """Bool per column: any pixel darker than `thresh`."""
    return (img.min(axis=-1) < thresh).any(axis=0) if img.ndim == 3 else (img < thresh).any(axis=0)


def ink_extent_and_widest_gap(cols: np.ndarray) -> tuple:
    xs = np.nonzero(cols)[0]
    assert len(xs), "nothing drawn"
    inner = cols[xs[0] : xs[-1] + 1]
    gap = run = 0
    for c in inner:
        run = 0 if c else run + 1
        gap = max(gap, run)
    return int(xs[-1] - xs[0] + 1), gap


def draw(font, text, width=400):
    img = Image.new("L", (width, 40), 255)
    heatmap.draw_text(ImageDraw.Draw(img), (5, 5), text, font, 0)
    return np.asarray(img)


FONTS = ["heatmap", "pillow-default", "pillow-bitmap"]


def get(name):
    """The heatmap's own font, and Pillow's two defaults (draw_text must keep spaces visible with any)."""
    if name == "heatmap":
        return heatmap.get_font(13)
    if name == "pillow-default":
        try:
            return ImageFont.load_default(size=13)  # Pillow >= 10.1: Aileron, whose space is 3 px at 13 px
        except (TypeError, ImportError, OSError):
            pytest.skip("Pillow without a scalable default font")
    if hasattr(ImageFont, "load_default_imagefont"):
        return ImageFont.load_default_imagefont()  # the latin-1 bitmap font
    return ImageFont.load_default()


# ---------------------------------------------------------------- spaces

@pytest.mark.parametrize("name", FONTS)
def test_spaces_are_drawn_as_visible_gaps(name):
    font = get(name)
    w1, gap1 = ink_extent_and_widest_gap(ink_columns(draw(font, "what shape")))
    w0, gap0 = ink_extent_and_widest_gap(ink_columns(draw(font, "whatshape")))
    assert w1 - w0 >= 3, (name, w1, w0)  # about a space wider (0.3 em at least)
    assert gap1 >= 3 and gap1 >= gap0 + 2, (name, gap1, gap0)  # a word gap wider than any letter gap
    assert heatmap.text_width(font, "what shape") - heatmap.text_width(font, "whatshape") >= 3


def title_line(png: np.ndarray) -> np.ndarray:
    return png[3:16, :]  # the first title line (either layout)


def test_png_title_keeps_the_space(tmp_path):
    frames = np.full((T, 32, 32, 3), 200, dtype=np.uint8)
    trace = make_trace()
    a = np.asarray(Image.open(heatmap.render_grid(frames, trace, str(tmp_path / "a.png"), spec=SPEC,
                                                  title="what shape")).convert("RGB"))
    b = np.asarray(Image.open(heatmap.render_grid(frames, trace, str(tmp_path / "b.png"), spec=SPEC,
                                                  title="whatshape")).convert("RGB"))
    w1, gap1 = ink_extent_and_widest_gap(ink_columns(title_line(a)))
    w0, gap0 = ink_extent_and_widest_gap(ink_columns(title_line(b)))
    assert w1 - w0 >= 3 and gap1 >= gap0 + 2, (w1, w0, gap1, gap0)


# ---------------------------------------------------------------- wrapping, ellipsis, non-ASCII

LONG_Q = ("Q: what shape is the object that moves across the screen from left to right in the second half "
          "of the clip, and which colour does it have when it stops next to the red square?  A: a cyan triangle")


@pytest.mark.parametrize("name", FONTS)
def test_wrap_fits_the_width_keeps_words_and_ellipsizes(name):
    font = get(name)
    lines = heatmap.wrap_text(LONG_Q, font, 200)
    assert len(lines) > 3
    assert all(heatmap.text_width(font, ln) <= 200 for ln in lines)
    assert " ".join(lines).split() == LONG_Q.split()  # nothing lost or cut mid-word
    short = heatmap.wrap_text(LONG_Q, font, 200, max_lines=3)
    assert len(short) == 3 and short[:2] == lines[:2]
    assert short[-1].endswith("\u2026" if hasattr(font, "getmetrics") else "...")
    assert all(heatmap.text_width(font, ln) <= 200 for ln in short)
    # one word longer than the line is broken between characters, still within the width
    word = heatmap.wrap_text("x" * 200, font, 100)
    assert "".join(word) == "x" * 200 and all(heatmap.text_width(font, ln) <= 100 for ln in word)
    assert heatmap.wrap_text("   ", font, 100) == [] and heatmap.wrap_text("a\nb\tc", font, 500) == ["a b c"]


NON_ASCII = "Q: 这是什么形状？ café — “naïve” ü 🙂 Ωμέγα  A: треугольник"


@pytest.mark.parametrize("name", FONTS)
def test_non_ascii_text_does_not_crash(name):
    font = get(name)
    lines = heatmap.wrap_text(NON_ASCII, font, 150, max_lines=3)
    assert lines and all(heatmap.text_width(font, ln) <= 150 for ln in lines)
    assert draw(font, lines[0]).min() < 160  # something was drawn


def test_narrow_grid_with_long_non_ascii_title_stays_inside(tmp_path):
    """One frame: the PNG is one cell wide. Title, subtitle and legend wrap; nothing is cut at the edge."""
    trace = make_trace(frames=1)
    frames = np.full((1, 32, 32, 3), 200, dtype=np.uint8)
    path = heatmap.render_grid(frames, trace, str(tmp_path / "n.png"), spec=SPEC, title=LONG_Q + " " + NON_ASCII,
                               timestamps=[123456.789])
    png = np.asarray(Image.open(path).convert("RGB"))
    assert (png[:, -4:] == 255).all(), "text reaches the right edge"
    assert (png[:, :2] == 255).all()


@pytest.mark.parametrize("cell", [96, 128, 224])
def test_frame_labels_fit_their_cell(cell):
    trace = make_trace(frames=2)
    frames = np.full((2, 32, 32, 3), 200, dtype=np.uint8)
    tiles = heatmap.render_frames(frames, trace, cell=cell, spec=SPEC, timestamps=[9_999_999.99, 1.0])
    for tile in tiles:
        label = tile[cell:]
        assert (label[:, -2:] == 255).all()  # shortened, not cut mid-glyph at the tile edge
        assert (label.min(axis=-1) < 160).any()  # but still drawn


def test_frame_label_shortens_in_order():
    font = heatmap.get_font(11)
    full = heatmap.frame_label(63, 12, 257, 1.5, True, font, 10_000)
    assert full == "#63 t=1.50s  kept 12/257"
    mid = heatmap.frame_label(63, 12, 257, 1.5, True, font, heatmap.text_width(font, "#63 t=1.50s 12/257"))
    assert mid == "#63 t=1.50s 12/257"
    assert heatmap.frame_label(5, 1, 17) == "#5 kept 1/17"


# ---------------------------------------------------------------- real trace: re-rendering is lossless

@pytest.fixture(scope="module")
def testbed_answer():
    torch = pytest.importorskip("torch")
    import videosparse.testbed
    from videosparse import SparseConfig
    from videosparse.pipeline import VideoQA
    from videosparse.testbed.synthetic import make_sample

    torch.manual_seed(0)
    cfg = SparseConfig.preset("video", budget=0.1, num_layers=4)
    cfg = dataclasses.replace(cfg, layers=(0, 1))  # two stages, both recycling
    qa = VideoQA.from_pretrained(videosparse.testbed.path(), sparsity=cfg)
    s = make_sample(0, 0)
    ans = qa.ask(s.frames, s.question, max_new_tokens=2)
    return qa, ans


@pytest.mark.slow
def test_testbed_trace_rerenders_identically(testbed_answer, tmp_path):
    qa, ans = testbed_answer
    trace = ans.trace
    assert len(trace.stages) == 2 and all(bool(s.merged.any()) for s in trace.stages)
    title = f"Q: {ans.question}  A: {ans.text}"
    a = heatmap.write_all(ans.frames, trace, str(tmp_path / "a"), spec=qa.spec, timestamps=ans.timestamps,
                          title=title, video=False)
    back, doc = heatmap.trace_from_json(a["json"])
    assert_traces_equal(trace, back)
    ta = heatmap.token_table(trace, timestamps=ans.timestamps)
    tb = heatmap.token_table(back, timestamps=doc["timestamps"])
    assert_tables_equal(ta, tb)
    # tokens recycled into clusters keep their cluster, which points at a merged kept token of that stage
    members = [i for i, c in enumerate(tb["cluster"]) if c >= 0]
    assert members and len(members) == sum(c >= 0 for c in ta["cluster"])
    for i in members:
        st = back.stages[tb["stage"][i]]
        assert bool(st.merged[0, tb["cluster"][i]]), i
    b = heatmap.write_all(ans.frames, back, str(tmp_path / "b"), spec=qa.spec, timestamps=doc["timestamps"],
                          title=title, video=False)
    assert np.array_equal(np.asarray(Image.open(a["png"])), np.asarray(Image.open(b["png"])))
    ja, jb = json.load(open(a["json"])), json.load(open(b["json"]))
    for k in ("tokens", "stages", "counts", "equivalent_tokens", "num_layers", "stage_layers", "raters_text_positions"):
        assert ja[k] == jb[k], k
    na, nb = np.load(a["npz"]), np.load(b["npz"])
    for k in na.files:
        assert np.array_equal(na[k], nb[k], equal_nan=na[k].dtype.kind == "f"), k
