"""Image I/O: geometry of NIfTI (affine <-> omega, flips, oblique), Pillow formats, NumPy,
clear errors for bad inputs, and safe (atomic, no-clobber, never-over-an-input) writing."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from multireg import io
from multireg.grid import Domain


def _pattern(shape, seed=0):
    """An asymmetric, non-constant test array."""
    rng = np.random.default_rng(seed)
    return rng.random(shape) + np.arange(shape[0]).reshape(-1, *(1,) * (len(shape) - 1))


def _listing(folder):
    return sorted(os.listdir(folder))


# ------------------------------------------------------------------------------------ NIfTI


@pytest.fixture
def nib():
    return pytest.importorskip("nibabel")


def _save_nifti(nib, path, data, affine, dtype=np.float32):
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    nib.save(img, str(path))
    return path


def test_nifti_affine_maps_to_omega_and_round_trips_exactly(nib, tmp_path):
    h, origin = np.array([2.0, 1.5, 3.0]), np.array([-10.0, 5.0, 20.0])
    affine = np.diag([*h, 1.0])
    affine[:3, 3] = origin
    data = _pattern((6, 5, 4))
    src = _save_nifti(nib, tmp_path / "a.nii.gz", data, affine)
    im = io.read_image(src)
    assert im.format == "nifti" and im.m == (6, 5, 4) and im.flipped == ()
    # the cell centres of omega are the voxel centres A·(i, 1)
    x = Domain(im.omega, im.m).cell_centers()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in im.m], indexing="ij"), -1).reshape(-1, 3)
    assert np.allclose(x, idx @ affine[:3, :3].T + origin, rtol=0, atol=1e-12)
    assert im.omega == (-11.0, 1.0, 4.25, 11.75, 18.5, 30.5)
    assert np.array_equal(im.data, data.astype(np.float32).astype(np.float64))
    out = io.write_image(tmp_path / "b.nii.gz", im.data, like=im)
    back = nib.load(str(out))
    assert np.array_equal(back.affine, nib.load(str(src)).affine)
    assert back.get_data_dtype() == np.float32
    assert np.array_equal(back.get_fdata(), nib.load(str(src)).get_fdata())
    assert io.read_image(out).omega == im.omega


def test_nifti_flipped_axis_is_reversed_on_read_and_back_on_write(nib, tmp_path):
    affine = np.diag([-2.0, 1.0, 1.5, 1.0])  # x decreases with the voxel index (LAS-like)
    affine[:3, 3] = [30.0, -4.0, 0.0]
    data = _pattern((5, 4, 3), seed=1)
    src = _save_nifti(nib, tmp_path / "las.nii", data, affine, dtype=np.float64)
    im = io.read_image(src)
    assert im.flipped == (0,)
    assert np.array_equal(im.data, data[::-1])  # array index grows with world x
    assert im.omega[:2] == (30.0 - 4 * 2.0 - 1.0, 31.0)  # lowest centre 22, highest 30
    x = Domain(im.omega, im.m).cell_centers().reshape(*im.m, 3)
    # array cell (i, j, k) is file voxel (m1 - 1 - i, j, k): same world point
    assert np.allclose(x[0, 1, 2], affine[:3, :3] @ [4, 1, 2] + affine[:3, 3])
    out = io.write_image(tmp_path / "las2.nii", im.data, like=im)
    back = nib.load(str(out))
    assert np.array_equal(back.affine, affine)
    assert np.array_equal(back.get_fdata(), data)


def test_nifti_oblique_is_refused_unless_allowed(nib, tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.eye(4)
    affine[:2, :2] = [[c, -s], [s, c]]
    affine[:3, :3] *= 2.0
    src = _save_nifti(nib, tmp_path / "oblique.nii.gz", _pattern((6, 5, 4)), affine)
    with pytest.raises(io.ImageReadError, match=r"oblique\.nii\.gz.*oblique"):
        io.read_image(src)
    im = io.read_image(src, allow_oblique=True)
    assert im.oblique and im.describe()["frame"] == "voxel"
    assert np.allclose(im.omega, (-1, 11, -1, 9, -1, 7))  # voxel size 2, first centre at 0
    out = io.write_image(tmp_path / "o2.nii.gz", im.data, like=im)
    assert np.array_equal(nib.load(str(out)).affine, nib.load(str(src)).affine)


def test_nifti_single_slice_is_2d_and_written_back_3d(nib, tmp_path):
    affine = np.diag([0.5, 0.25, 4.0, 1.0])
    src = _save_nifti(nib, tmp_path / "slice.nii", _pattern((7, 6, 1)), affine)
    im = io.read_image(src)
    assert im.m == (7, 6) and im.omega == (-0.25, 3.25, -0.125, 1.375)
    out = io.write_image(tmp_path / "slice2.nii", im.data, like=im)
    assert nib.load(str(out)).shape == (7, 6, 1)


def test_nifti_on_a_finer_grid_keeps_the_box(nib, tmp_path):
    affine = np.diag([-2.0, 3.0, 1.0, 1.0])
    affine[:3, 3] = [10.0, 1.0, 0.0]
    src = _save_nifti(nib, tmp_path / "coarse.nii", _pattern((4, 3, 1)), affine)
    im = io.read_image(src)
    fine = _pattern((8, 6), seed=3)
    out = io.write_image(tmp_path / "fine.nii", fine, like=im)
    back = io.read_image(out)
    assert back.m == (8, 6) and np.allclose(back.omega, im.omega, rtol=0, atol=1e-12)
    assert back.flipped == (0,) and np.allclose(back.data, fine)


def test_nifti_frames_last_axis(nib, tmp_path):
    data = _pattern((5, 4, 3))  # (m1, m2, N)
    src = _save_nifti(nib, tmp_path / "seq.nii.gz", data, np.diag([1.0, 2.0, 1.0, 1.0]))
    im = io.read_frames(src)
    assert im.frames and im.data.shape == (3, 5, 4) and im.m == (5, 4)
    assert np.allclose(im.data[1], data[:, :, 1], atol=1e-6)


# ----------------------------------------------------------------------- PNG, JPEG, TIFF


@pytest.fixture
def PIL():
    return pytest.importorskip("PIL.Image")


def test_png_orientation_rows_are_x1_and_colour_is_bt601_luminance(PIL, tmp_path):
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[1, 4] = (200, 100, 50)  # row 1, column 4
    rgb[3, 0] = (0, 0, 255)
    PIL.fromarray(rgb).save(tmp_path / "c.png")
    im = io.read_image(tmp_path / "c.png")
    assert im.m == (4, 6) and im.omega == (0.0, 4.0, 0.0, 6.0) and im.mode == "RGB"
    assert im.data[1, 4] == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert im.data[3, 0] == pytest.approx(0.114 * 255)
    assert np.count_nonzero(im.data) == 2
    spaced = io.read_image(tmp_path / "c.png", spacing=(0.5, 2.0))
    assert spaced.omega == (0.0, 2.0, 0.0, 12.0)


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("g8.png", (np.arange(30).reshape(5, 6) * 8).astype(np.uint8)),
        ("g16.png", (np.arange(30).reshape(5, 6) * 2000).astype(np.uint16)),
        ("g16.tif", (np.arange(30).reshape(5, 6) * 2000).astype(np.uint16)),
        ("f.tif", np.linspace(-1.5, 2.5, 30).reshape(5, 6).astype(np.float32)),
    ],
)
def test_pillow_formats_round_trip_their_sample_type(PIL, tmp_path, name, array):
    PIL.fromarray(array).save(tmp_path / name)
    im = io.read_image(tmp_path / name)
    assert np.array_equal(im.data, array.astype(np.float64))
    out = io.write_image(tmp_path / f"out-{name}", im.data, like=im)
    back = np.asarray(PIL.open(out))
    assert back.dtype == array.dtype and np.array_equal(back, array)


def test_png_output_is_rounded_and_clipped_to_8_bits(PIL, tmp_path):
    PIL.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(tmp_path / "a.png")
    like = io.read_image(tmp_path / "a.png")
    data = np.array([[-3.0, 0.4, 0.6, 254.7], [300.0, 1, 2, 3], [4, 5, 6, 7]])
    back = np.asarray(PIL.open(io.write_image(tmp_path / "b.png", data, like=like)))
    assert back[0].tolist() == [0, 0, 1, 255] and back[1, 0] == 255


def test_jpeg_is_read_as_grey(PIL, tmp_path):
    a = np.tile(np.linspace(0, 255, 16), (12, 1)).astype(np.uint8)
    PIL.fromarray(a).save(tmp_path / "a.jpg", quality=100)
    im = io.read_image(tmp_path / "a.jpg")
    assert im.m == (12, 16) and im.format == "jpeg"
    assert np.max(np.abs(im.data - a)) <= 3  # lossy


def test_multipage_tiff_is_refused(PIL, tmp_path):
    pages = [PIL.fromarray(np.full((4, 4), v, dtype=np.uint8)) for v in (1, 2)]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(io.ImageReadError, match=r"m\.tif.*2 pages"):
        io.read_image(tmp_path / "m.tif")


# ------------------------------------------------------------------------------------ NumPy


def test_npy_and_npz_geometry(tmp_path):
    a = _pattern((5, 4))
    np.save(tmp_path / "a.npy", a)
    im = io.read_image(tmp_path / "a.npy")
    assert im.omega == (0.0, 5.0, 0.0, 4.0) and np.array_equal(im.data, a)
    np.savez(tmp_path / "b.npz", image=a, omega=np.array([-1.0, 1.0, 0.0, 2.0]))
    im = io.read_image(tmp_path / "b.npz")
    assert im.omega == (-1.0, 1.0, 0.0, 2.0)
    with pytest.raises(ValueError, match="omega"):
        io.read_image(tmp_path / "b.npz", spacing=(1.0, 1.0))
    out = io.write_image(tmp_path / "c.npz", a * 2, like=im)
    back = io.read_image(out)
    assert back.omega == im.omega and np.array_equal(back.data, a * 2)
    np.savez(tmp_path / "two.npz", x=a, y=a)
    with pytest.raises(io.ImageReadError, match="which entry"):
        io.read_image(tmp_path / "two.npz")


def test_npz_frames_with_times(tmp_path):
    frames = _pattern((3, 5, 4))
    np.savez(tmp_path / "f.npz", frames=frames, times=np.array([0.0, 1.0, 2.5]))
    im = io.read_frames(tmp_path / "f.npz")
    assert im.data.shape == (3, 5, 4) and im.m == (5, 4)
    assert np.array_equal(im.extra["times"], [0.0, 1.0, 2.5])


# ------------------------------------------------------------------------------------ errors


def test_bad_inputs_give_clear_errors_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.png"):
        io.read_image(tmp_path / "nothere.png")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all" * 5)
    if importlib.util.find_spec("PIL") is not None:
        with pytest.raises(io.ImageReadError, match=r"garbage\.png: cannot read as PNG"):
            io.read_image(tmp_path / "garbage.png")
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(io.ImageReadError, match=r"garbage\.npy"):
        io.read_image(tmp_path / "garbage.npy")
    (tmp_path / "a.bmpx").write_bytes(b"")
    with pytest.raises(io.ImageReadError, match="unsupported file extension"):
        io.read_image(tmp_path / "a.bmpx")
    bad = _pattern((4, 4))
    bad[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(io.ImageReadError, match=r"nan\.npy: contains 1 NaN"):
        io.read_image(tmp_path / "nan.npy")
    np.save(tmp_path / "const.npy", np.full((4, 4), 3.0))
    with pytest.raises(io.ImageReadError, match="constant"):
        io.read_image(tmp_path / "const.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 4)))
    with pytest.raises(io.ImageReadError, match="empty"):
        io.read_image(tmp_path / "empty.npy")
    np.save(tmp_path / "line.npy", np.arange(5.0))
    with pytest.raises(io.ImageReadError, match="2D or 3D"):
        io.read_image(tmp_path / "line.npy")
    np.save(tmp_path / "complex.npy", np.ones((3, 3)) * 1j)
    with pytest.raises(io.ImageReadError, match="complex"):
        io.read_image(tmp_path / "complex.npy")


def test_corrupt_nifti(nib, tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(io.ImageReadError, match=r"bad\.nii\.gz: cannot read as NIfTI"):
        io.read_image(tmp_path / "bad.nii.gz")


# ----------------------------------------------------------------------------- safe writing


def test_existing_output_needs_overwrite_and_inputs_are_protected(tmp_path):
    a = _pattern((4, 3))
    np.save(tmp_path / "in.npy", a)
    im = io.read_image(tmp_path / "in.npy")
    io.write_image(tmp_path / "out.npy", a, like=im)
    with pytest.raises(FileExistsError, match="--overwrite"):
        io.write_image(tmp_path / "out.npy", 2 * a, like=im)
    assert np.array_equal(np.load(tmp_path / "out.npy"), a)
    io.write_image(tmp_path / "out.npy", 2 * a, like=im, overwrite=True)
    assert np.array_equal(np.load(tmp_path / "out.npy"), 2 * a)
    for target in (tmp_path / "in.npy", tmp_path / "sub" / ".." / "in.npy"):
        with pytest.raises(ValueError, match="over an input"):
            io.write_image(target, a, like=im, overwrite=True)
    with pytest.raises(ValueError, match="over an input"):
        io.write_json(tmp_path / "in.npy", {}, overwrite=True, protect=[tmp_path / "in.npy"])
    assert np.array_equal(np.load(tmp_path / "in.npy"), a)
    assert _listing(tmp_path) == ["in.npy", "out.npy"]


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch, existing):
    a = _pattern((4, 3))
    if existing:
        io.write_image(tmp_path / "out.npy", a)
    before = (tmp_path / "out.npy").read_bytes() if existing else None

    def half_written(tmp, data, *rest):
        with open(tmp, "wb") as fh:
            fh.write(b"\x93NUMPY half")
        raise KeyboardInterrupt

    monkeypatch.setitem(io._WRITERS, "npy", half_written)
    with pytest.raises(KeyboardInterrupt):
        io.write_image(tmp_path / "out.npy", 2 * a, overwrite=True)
    assert _listing(tmp_path) == (["out.npy"] if existing else [])
    if existing:
        assert (tmp_path / "out.npy").read_bytes() == before


def _tree(folder):
    """Every entry below ``folder``, hidden ones included: relative path -> bytes (or "dir",
    or "-> target" for a link)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            key = str(path.relative_to(folder))
            if path.is_symlink():
                out[key] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                out[key] = "dir"
            else:
                out[key] = path.read_bytes()
    return out


def _old_outputs(out):
    out.mkdir(parents=True)
    np.save(out / "a.npy", _pattern((4, 3)))
    (out / "b.json").write_text('{"old": true}\n')


@pytest.mark.parametrize("where", ["new/deeper", "existing"])
def test_output_set_is_all_or_none_when_interrupted(tmp_path, where):
    out = tmp_path / where
    if where == "existing":
        _old_outputs(out)
    before = _tree(tmp_path)
    paths = [out / "a.npy", out / "b.json"]
    outputs = io.OutputSet(paths, overwrite=True)
    assert _tree(tmp_path) == before  # checking creates nothing
    with pytest.raises(KeyboardInterrupt), outputs:
        io.write_image(outputs.stage(paths[0]), 2 * _pattern((4, 3)))
        raise KeyboardInterrupt  # after the first file, before the second
    assert _tree(tmp_path) == before  # nothing of the run, not even a temporary
    with outputs:
        io.write_image(outputs.stage(paths[0]), 2 * _pattern((4, 3)))
        io.write_json(outputs.stage(paths[1]), {"new": True})
    assert _listing(out) == ["a.npy", "b.json"]
    assert np.array_equal(np.load(out / "a.npy"), 2 * _pattern((4, 3)))
    assert json.loads((out / "b.json").read_text()) == {"new": True}
    if where != "existing":  # the new folders have the usual permissions, not a temp's 0700
        mode = 0o777 & ~_umask()
        assert (tmp_path / "new").stat().st_mode & 0o777 == mode


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_output_set_refuses_an_existing_file_or_an_input_before_writing(tmp_path):
    _old_outputs(tmp_path / "out")
    with pytest.raises(FileExistsError, match="overwrite"):
        io.OutputSet([tmp_path / "out" / "x.npy", tmp_path / "out" / "b.json"])
    with pytest.raises(ValueError, match="over an input"):
        io.OutputSet([tmp_path / "out" / "a.npy"], overwrite=True, protect=[tmp_path / "out/a.npy"])
    with pytest.raises(ValueError, match="same file"):
        io.OutputSet([tmp_path / "n" / "x.npy", tmp_path / "n" / ".." / "n" / "x.npy"])
    assert _listing(tmp_path) == ["out"]


def test_a_failed_commit_is_rolled_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _old_outputs(out)
    before = _tree(tmp_path)
    paths = [out / "a.npy", out / "b.json", out / "c.json"]  # two replaced, one new
    outputs = io.OutputSet(paths, overwrite=True)
    replace = os.replace

    def disk_full(src, dst, *args, **kwargs):
        if Path(dst).name == "b.json" and ".old" not in Path(src).parts:
            raise OSError(28, "No space left on device")
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"), outputs:
        for path in paths:
            io.write_json(outputs.stage(path), {"new": path.name})
    assert _tree(tmp_path) == before  # a.npy put back, c.json removed, no temporaries


def test_ctrl_c_during_the_commit_waits_until_every_output_is_in_place(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _old_outputs(out)
    paths = [out / "a.npy", out / "b.json"]
    outputs = io.OutputSet(paths, overwrite=True)
    replace = os.replace

    def interrupted(src, dst, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between two renames of the commit
        return replace(src, dst, *args, **kwargs)

    with pytest.raises(KeyboardInterrupt), outputs:
        for path in paths:
            io.write_json(outputs.stage(path), {"new": path.name})
        monkeypatch.setattr(os, "replace", interrupted)
    monkeypatch.undo()
    assert _listing(out) == ["a.npy", "b.json"]  # both new, then the interrupt
    assert json.loads((out / "a.npy").read_text()) == {"new": "a.npy"}
    assert json.loads((out / "b.json").read_text()) == {"new": "b.json"}


def test_temporaries_are_recognisable_and_stale_ones_are_removed(tmp_path):
    out = tmp_path / "out"
    _old_outputs(out)
    # a multireg killed (kill -9) while writing leaves its temporaries
    code = f"""
        import os, signal
        import numpy as np
        from multireg import io
        outputs = io.OutputSet([{str(out / "a.npy")!r}], overwrite=True)
        outputs.__enter__()
        io.write_image(outputs.stage({str(out / "a.npy")!r}), np.eye(3))
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid = int(done.stdout)
    left = [n for n in _listing(out) if n not in ("a.npy", "b.json")]
    assert left and all(re.match(rf"\.multireg-tmp-{pid}-[0-9a-f]{{8}}-", n) for n in left)
    # what must stay: a live process's temporary (ours), another machine's, look-alikes
    host = left[0].split("-")[3]
    keep = [
        f".multireg-tmp-{os.getpid()}-{host}-live-a.npy",
        f".multireg-tmp-{pid}-00000000-elsewhere-a.npy",
        ".multireg-tmp-notapid-a.npy",
        ".a.npy.tmp",
        "multireg-tmp-1-a.npy",
    ]
    for name in keep:
        (out / name).write_text("not multireg's to remove")
    io.OutputSet([out / "a.npy"], overwrite=True)  # the next run into the folder
    assert _listing(out) == sorted(["a.npy", "b.json", *keep])
    # io.write_image's own temporary is named the same way
    names = []

    def record(tmp, data, *rest):
        names.append(Path(tmp).name)
        raise KeyboardInterrupt

    writers = dict(io._WRITERS)
    try:
        io._WRITERS["npy"] = record
        with pytest.raises(KeyboardInterrupt):
            io.write_image(tmp_path / "x.npy", np.eye(3))
    finally:
        io._WRITERS.update(writers)
    assert re.fullmatch(rf"\.multireg-tmp-{os.getpid()}-{host}-.+-x\.npy", names[0]), names


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder nobody can create files in. Root ignores permission bits, so as root use
    sysfs, which refuses new files to root as well (skip where there is none)."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    folder = Path("/sys")
    try:
        probe = folder / f".multireg-test-{os.getpid()}"
        probe.write_text("")
    except OSError:
        yield folder
        return
    probe.unlink()
    pytest.skip("no folder that root cannot write to")


def test_an_unwritable_output_is_found_before_writing(tmp_path, unwritable_folder):
    (tmp_path / "file").write_text("a file, not a folder")
    before = _tree(tmp_path)
    with pytest.raises(
        NotADirectoryError, match=r"out: cannot create the folder: .*file is a file"
    ):
        io.OutputSet([tmp_path / "file" / "out" / "a.npy"])
    with pytest.raises(NotADirectoryError, match="file: is a file, not a folder"):
        io.OutputSet([tmp_path / "file" / "a.npy"])
    for out in (unwritable_folder, unwritable_folder / "missing" / "out"):
        with pytest.raises(PermissionError, match=f"{re.escape(str(out))}: cannot write there"):
            io.OutputSet([out / "a.npy"])
    assert _tree(tmp_path) == before


def test_an_output_that_is_a_symlink_is_replaced_not_written_through(tmp_path):
    target = tmp_path / "target.json"
    target.write_text("precious")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere.json")
    for path in (link, dangling):
        with pytest.raises(FileExistsError, match="overwrite"):
            io.OutputSet([path])
    with pytest.raises(ValueError, match="over an input"):
        io.OutputSet([link], overwrite=True, protect=[target])
    outputs = io.OutputSet([link, dangling], overwrite=True)
    with outputs:
        for path in (link, dangling):
            io.write_json(outputs.stage(path), {"new": True})
    assert target.read_text() == "precious" and not (tmp_path / "nowhere.json").exists()
    assert not link.is_symlink() and json.loads(link.read_text()) == {"new": True}
    assert not dangling.is_symlink()


def test_write_json_converts_numpy_and_non_finite(tmp_path):
    from multireg.optimize import Status

    obj = {"w": np.array([1.0, 2.0]), "n": np.int64(3), "bad": float("nan"), "s": Status.CONVERGED}
    path = io.write_json(tmp_path / "r.json", obj)
    assert json.loads(path.read_text()) == {"w": [1.0, 2.0], "n": 3, "bad": None, "s": "converged"}
    io.write_npz(tmp_path / "d.npz", u=np.ones((2, 2)))
    with np.load(tmp_path / "d.npz") as z:
        assert z["u"].shape == (2, 2)


def test_the_writability_probe_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    """Ctrl-C between creating and removing the probe file is held back until it is gone."""
    import os
    import signal

    from multireg.io import outputs

    real_close = os.close

    def close_then_interrupt(fd):
        real_close(fd)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(outputs.os, "close", close_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        outputs._probe(tmp_path, tmp_path)
    assert list(tmp_path.iterdir()) == []
