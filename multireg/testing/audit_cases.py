"""The bad-input audit's cases (issue 12): unusual and wrong input for the API (in-process
calls) and the command line (``python -m multireg ...``), each with the keywords a clear error
must name and, for a success, a check of the result (a known shift recovered, the identity for
an image registered to itself, the levels that ran). :func:`cases` lists them; ``quick=True`` the
subset that ``--quick`` runs. The harness that runs and judges them is
:mod:`multireg.testing.audit_harness`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multireg.testing.audit_harness import SHIFT, Case, Context

__all__ = ["cases"]

# ------------------------------------------------------------------------------ the API cases


def _register(ctx: Context, T: Any, R: Any, omega: Any = (0, 32, 0, 32), **kw: Any) -> Any:
    from multireg import register

    kw.setdefault("backend", ctx.backend)
    kw.setdefault("levels", 3)
    return register(T, R, omega, **kw)


def _shift_problem(w: Any, shift: Sequence[float] = SHIFT, tol: float = 0.1) -> str | None:
    """A problem if the affine parameters (FAIR layout) are not the known translation."""
    w = np.asarray(w, dtype=np.float64).ravel()
    want = np.array([1.0, 0.0, shift[0], 0.0, 1.0, shift[1]])
    if w.shape != want.shape or not np.all(np.isfinite(w)):
        return f"parameters {w.tolist()} are not 6 finite numbers"
    err_linear = np.max(np.abs(w[[0, 1, 3, 4]] - want[[0, 1, 3, 4]]))
    err_shift = np.max(np.abs(w[[2, 5]] - want[[2, 5]]))
    if err_linear > tol / 10 or err_shift > tol:
        return (
            f"the known shift {list(shift)} was not recovered: parameters {np.round(w, 4).tolist()}"
        )
    return None


def _host(x: Any) -> np.ndarray:
    from multireg._checks import to_host

    return np.asarray(to_host(x), dtype=np.float64)


def _shifted(ctx: Context, folder: Path, res: Any) -> str | None:
    return _shift_problem(_host(res.w))


def _identity(ctx: Context, folder: Path, res: Any) -> str | None:
    return _shift_problem(_host(res.w), (0.0, 0.0), tol=1e-3)


def _not_blank(ctx: Context, folder: Path, res: Any) -> str | None:
    return "the warped image is all zero" if np.max(np.abs(_host(res.warped))) < 0.1 else None


def _levels_ran(ctx: Context, folder: Path, res: Any) -> str | None:
    ran = [lv.level for lv in res.levels]
    return f"levels {ran} reported for a 32² image (it has 0 to 5)" if max(ran) > 5 else None


def _torch_grad(ctx: Context, folder: Path) -> Any:
    from multireg import get_backend

    bk = get_backend("torch")  # the core never imports a framework: its adapter makes tensors
    T = bk.asarray(ctx.array("T.npy")).requires_grad_()
    return _register(ctx, T, bk.asarray(ctx.array("R.npy")))


def _negative_strides(ctx: Context, folder: Path) -> Any:
    """FAIR reads a picture as ``img[::-1].T``: a view with a negative stride (same values)."""
    T, R = ctx.array("T.npy"), ctx.array("R.npy")
    T_view = np.ascontiguousarray(T.T[::-1])[::-1].T
    R_view = np.ascontiguousarray(R.T[::-1])[::-1].T
    if not (T_view.strides[1] < 0 and np.array_equal(T_view, T)):
        raise AssertionError("the audit's negative-stride view is wrong")
    return _register(ctx, T_view, R_view)


def _dynamics(ctx: Context, name: str = "frames.npy", **kw: Any) -> Any:
    from multireg.problems import dynamics

    frames = ctx.array(name)
    n, m1, m2 = frames.shape if frames.ndim == 3 else (1, *frames.shape)
    times = kw.pop("times", np.arange(n, dtype=np.float64))
    omega = kw.pop("omega", (0.0, float(m1), 0.0, float(m2)))
    kw.setdefault("backend", ctx.backend)
    return dynamics.solve(frames, times, omega, **kw)


def _superres(ctx: Context, name: str = "frames.npy", **kw: Any) -> Any:
    from multireg.problems import superres

    frames = ctx.array(name)
    m = frames.shape[-1]
    omega = kw.pop("omega", (-m / 2, m / 2, -m / 2, m / 2))
    m_fine = kw.pop("m_fine", (2 * m, 2 * m))
    kw.setdefault("backend", ctx.backend)
    kw.setdefault("max_iter", 2)
    return superres.solve(frames, omega, m_fine, **kw)


def _homotopy(ctx: Context, **kw: Any) -> Any:
    from multireg.problems.homotopy import homotopy

    kw.setdefault("backend", ctx.backend)
    return homotopy(ctx.array("T.npy"), ctx.array("R.npy"), (0, 32, 0, 32), **kw)


def _read(ctx: Context, name: str) -> Any:
    from multireg import io

    return io.read_image(ctx.i(name))


def _write_over_input(ctx: Context, folder: Path) -> Any:
    from multireg import io

    T = ctx.i("T.npy")
    return io.write_image(T, ctx.array("R.npy"), overwrite=True, protect=[T])


def _write_existing(ctx: Context, folder: Path) -> Any:
    from multireg import io

    return io.write_image(folder / "existing.npy", ctx.array("R.npy"))


def _existing_npy(ctx: Context, folder: Path) -> None:
    np.save(folder / "existing.npy", np.zeros((4, 4)))


def _api_cases() -> list[Case]:
    def case(name, expect, call, mentions="", check=None, q=False, **kw) -> Case:
        m = tuple(mentions.split("|")) if mentions else ()
        return Case(f"api-{name}", "api", expect, call=call, mentions=m, check=check, quick=q, **kw)

    def e(name, call, mentions, **kw):  # must raise a clear ValueError / TypeError
        return case(name, "error", call, mentions, **kw)

    def x(name, call, mentions, check, **kw):  # a clear error or a correct result
        return case(name, "either", call, mentions, check, **kw)

    def s(name, call, check, **kw):  # must work and be right
        return case(name, "success", call, "", check, **kw)

    def reg(**options):  # register the shifted pair with these options
        return lambda c, f: _register(c, c.array("T.npy"), c.array("R.npy"), **options)

    def reg_arrays(T, R, omega=(0, 32, 0, 32), **options):
        return lambda c, f: _register(c, T(c), R(c), omega, **options)

    def a(name, scale=1.0, kind=None):  # an input array, scaled or converted
        def load(c):
            v = c.array(name) * scale
            return v.astype(kind) if kind is not None else v

        return load

    T, R = a("T.npy"), a("R.npy")
    tiny = (a("tiny_T.npy"), a("tiny_R.npy"), (0, 2, 0, 2))
    nan = float("nan")
    return [
        # ordinary and unusual input that must work
        s("register-shift", reg(), _shifted, q=True),
        s("register-self", reg_arrays(R, R), _identity, q=True),
        s("negative-strides", _negative_strides, _shifted, q=True),
        x("torch-requires-grad", _torch_grad, "T|grad", _shifted, needs=("torch",), q=True),
        s("uint8-images", reg_arrays(a("T.npy", 200, np.uint8), a("R.npy", 200, np.uint8)),
            _shifted),
        x("bool-images", reg_arrays(a("bool_T.npy"), a("bool_R.npy")), "T|bool", None,
            may_not_converge=True),
        # extreme intensities: rescale (and get it right) or refuse clearly
        x("subnormal-1e-310", reg_arrays(a("T.npy", 1e-310), a("R.npy", 1e-310)),
            "intensit|scale|small|T", _shifted),
        x("huge-1e300", reg_arrays(a("T.npy", 1e300), a("R.npy", 1e300)),
            "intensit|scale|large|overflow|T", _shifted),
        # sizes against levels
        x("tiny-2x2-one-level", reg_arrays(*tiny, levels=None), "small|cells|size|T", _not_blank),
        e("tiny-2x2-levels-3", reg_arrays(*tiny, levels=3), "level|small|cells"),
        x("levels-beyond-image", reg_arrays(a("R16.npy"), a("R16.npy"), (0, 16, 0, 16), levels=9),
            "level", _identity),
        x("levels-3-20", reg(levels=(3, 20)), "level", _levels_ran),
        e("levels-0", reg(levels=0), "level", q=True),
        e("levels-reversed", reg(levels=(5, 3)), "level", q=True),
        e("levels-string", reg(levels="abc"), "level", q=True),
        # bad images
        e("nan-image", reg_arrays(a("nan.npy"), R), "nan", q=True),
        e("inf-image", reg_arrays(a("inf.npy"), R), "inf", q=True),
        e("empty-image", reg_arrays(a("empty.npy"), a("empty.npy")), "T|empty|shape", q=True),
        e("constant-images", reg_arrays(a("const.npy"), a("const.npy")), "constant|contrast",
            q=True),
        e("one-d-image", reg_arrays(a("one_d.npy"), a("one_d.npy"), (0, 32)), "dimension|shape|T",
            q=True),
        e("shape-mismatch", reg_arrays(T, a("R16.npy")), "shape", q=True),
        e("dim-mismatch-3d-2d", reg_arrays(a("T3d.npy"), R), "shape|dimension", q=True),
        e("complex-image", reg_arrays(a("complex.npy"), R), "real|complex", q=True),
        e("string-image", reg_arrays(lambda c: "T.png", R), "T", q=True),
        e("none-image", reg_arrays(lambda c: None, R), "T", q=True),
        # bad domains and options
        e("omega-length", reg_arrays(T, R, (0, 32, 0)), "omega", q=True),
        e("omega-b-below-a", reg_arrays(T, R, (32, 0, 0, 32)), "omega", q=True),
        e("omega-nan", reg_arrays(T, R, (0, nan, 0, 32)), "omega", q=True),
        e("omega-3d-for-2d", reg_arrays(T, R, (0, 32, 0, 32, 0, 32)), "omega", q=True),
        e("unknown-keyword", reg(max_iters=5), "max_iters", q=True),
        e("misspelt-method", reg(method="gaus-newton"), "method", q=True),
        e("misspelt-transform", reg(transform="afine"), "transform|afine", q=True),
        e("negative-alpha", reg(transform="nonparametric", alpha=-1.0), "alpha", q=True),
        e("nan-alpha", reg(transform="nonparametric", alpha=nan), "alpha", q=True),
        e("missing-alpha", reg(transform="nonparametric"), "alpha", q=True),
        e("negative-theta", reg(theta=-1.0), "theta", q=True),
        e("negative-max-iter", reg(max_iter=-1), "max_iter", q=True),
        e("nan-tolerance", reg(tol_j=nan), "tol_j", q=True),
        e("w0-wrong-shape", reg(w0=np.zeros(3)), "w0", q=True),
        e("mi-with-gauss-newton", reg(distance="mi"), "mi|gauss", q=True),
        e("dtype-float16", reg(dtype="float16"), "dtype", q=True),
        e("backend-numpy", reg(backend="numpy"), "numpy|differentiat", q=True),
        e("backend-unknown", reg(backend="nosuch"), "nosuch", q=True),
        e("get-backend-unknown", lambda c, f: _multireg().get_backend("nosuch"), "nosuch", q=True),
        e("set-backend-unknown", lambda c, f: _multireg().set_backend("nosuch"), "nosuch", q=True),
        # homotopy, super-resolution, dynamics
        e("homotopy-increasing-thetas", lambda c, f: _homotopy(c, theta_range=(1.0, 10.0)), "theta",
            q=True),
        e("superres-2d-frames", lambda c, f: _superres(c, "frames2d.npy", m_fine=(32, 32)),
            "frames", q=True),
        e("superres-m-fine-zero", lambda c, f: _superres(c, m_fine=(0, 0)), "m_fine", q=True),
        e("superres-negative-alpha", lambda c, f: _superres(c, alpha=-1.0), "alpha", q=True),
        e("superres-unknown-method", lambda c, f: _superres(c, method="gauss"), "method", q=True),
        e("superres-nan-frames", lambda c, f: _superres(c, "frames_nan.npy"), "nan|frames", q=True),
        e("superres-omega-length", lambda c, f: _superres(c, omega=(0, 16)), "omega", q=True),
        e("dynamics-regions-no-masks", lambda c, f: _dynamics(c, model="regions"),
            "masks", fast=1.0, q=True),
        e("dynamics-times-length", lambda c, f: _dynamics(c, model="basis", times=np.arange(3.0)),
            "times", q=True),
        e("dynamics-masks-shape", lambda c, f: _dynamics(c, masks={"a": np.ones((8, 8), bool)}),
            "masks|mask", q=True),
        e("dynamics-unknown-model", lambda c, f: _dynamics(c, model="bogus"), "model", q=True),
        e("dynamics-2d-frames", lambda c, f: _dynamics(c, "frames2d.npy", model="basis"), "frames",
            q=True),
        # files
        e("io-read-missing", lambda c, f: _read(c, "missing.npy"), "missing.npy", os_errors=True,
            q=True),
        e("io-read-corrupt-png", lambda c, f: _read(c, "corrupt.png"), "corrupt.png",
            os_errors=True, uses=("corrupt.png",), needs=("PIL",), q=True),
        e("io-read-object-npy", lambda c, f: _read(c, "object.npy"), "object.npy", os_errors=True,
            uses=("object.npy",), q=True),
        e("io-write-over-input", _write_over_input, "input", os_errors=True, uses=("T.npy",),
            q=True),
        e("io-write-existing", _write_existing, "exists|overwrite", os_errors=True,
            setup=_existing_npy, protect=("existing.npy",), q=True),
    ]  # fmt: skip


def _multireg() -> Any:
    import multireg

    return multireg


# ---------------------------------------------------------------------- command-line cases


def _result_json(folder: Path) -> dict:
    return json.loads((folder / "out" / "result.json").read_text())


def _cli_shifted(ctx: Context, folder: Path, stdout: str) -> str | None:
    return _shift_problem(_result_json(folder)["parameters"])


def _cli_identity(ctx: Context, folder: Path, stdout: str) -> str | None:
    return _shift_problem(_result_json(folder)["parameters"], (0.0, 0.0), tol=1e-3)


def _cli_shift_length(ctx: Context, folder: Path, stdout: str) -> str | None:
    """The shift's length, whatever axis order and orientation the file format implies."""
    w = np.asarray(_result_json(folder)["parameters"], dtype=np.float64)
    length, want = float(np.hypot(w[2], w[5])), float(np.hypot(*SHIFT))
    det = abs(np.linalg.det(w[[0, 1, 3, 4]].reshape(2, 2)))
    if abs(length - want) > 0.15 or abs(det - 1) > 0.02:
        return f"the known shift (length {want:.3f}) was not recovered: {np.round(w, 4).tolist()}"
    return None


def _cli_not_blank(ctx: Context, folder: Path, stdout: str) -> str | None:
    warped = np.load(folder / "out" / "warped.npy")
    return "the warped image is all zero" if np.max(np.abs(warped)) < 0.1 else None


def _cli_levels_ran(ctx: Context, folder: Path, stdout: str) -> str | None:
    info = _result_json(folder)
    ran = [lv["level"] for lv in info.get("levels", [])]
    used = info.get("settings", {}).get("levels_used")
    claimed = used if isinstance(used, list) else []
    if max(ran, default=0) > 5 or max(claimed, default=0) > 5:
        return f"result.json records levels {claimed or ran} for a 32² image (ran: {ran})"
    return None


def _help_backends(ctx: Context, folder: Path, stdout: str) -> str | None:
    match = re.search(r"--backend \{([^}]*)\}", stdout)
    if match and "numpy" in match.group(1).split(","):
        return "register --help offers --backend numpy, which register refuses"
    return None


def _help_printed(ctx: Context, folder: Path, stdout: str) -> str | None:
    return None if "usage" in stdout.lower() else "no usage text on stdout"


def _report_written(ctx: Context, folder: Path, stdout: str) -> str | None:
    return None if "|" in (folder / "report.md").read_text() else "the report holds no table"


def _existing_outputs(ctx: Context, folder: Path) -> None:
    (folder / "out").mkdir()
    np.save(folder / "out" / "warped.npy", np.zeros((32, 32)))
    (folder / "out" / "result.json").write_text("{}\n")


def _existing_result(ctx: Context, folder: Path) -> None:
    (folder / "out").mkdir()
    (folder / "out" / "result.json").write_text("{}\n")


def _existing_notes(ctx: Context, folder: Path) -> None:
    (folder / "existing.md").write_text("my notes: keep me\n")


def _link_to_input(name: str, target: str) -> Callable[[Context, Path], None]:
    def setup(ctx: Context, folder: Path) -> None:
        (folder / name).symlink_to(ctx.inputs / target)

    return setup


def _unicode_input(ctx: Context, folder: Path) -> None:
    shutil.copy(ctx.inputs / "T.npy", folder / "T ü 1.npy")


def _read_only_folder(ctx: Context, folder: Path) -> None:
    (folder / "locked").mkdir()
    (folder / "locked").chmod(0o555)


def _cli_cases() -> list[Case]:
    def case(name, expect, command, mentions="", check=None, q=False, **kw) -> Case:
        m = tuple(mentions.split("|")) if mentions else ()
        kw.setdefault(
            "backend",
            (command.split() or [""])[0] in ("register", "homotopy", "superres", "dynamics"),
        )
        argv = tuple(shlex.split(command))
        return Case(f"cli-{name}", "cli", expect, argv, mentions=m, check=check, quick=q, **kw)

    def e(name, command, mentions, **kw):  # must exit 2 with one clear line
        return case(name, "error", command, mentions, **kw)

    def x(name, command, mentions, check, **kw):  # a clear error or a correct result
        return case(name, "either", command, mentions, check, outputs=OUT, **kw)

    def s(name, command, check, **kw):  # must work and be right
        kw.setdefault("outputs", OUT)
        return case(name, "success", command, "", check, **kw)

    OUT = ("out/warped.npy", "out/result.json")
    REG = "register {i}/T.npy {i}/R.npy"
    VAL = "validate --backends {b} --report"
    bogus = {"MULTIREG_BACKEND": "bogus"}
    fig = importlib.util.find_spec("matplotlib") is not None
    slow_run = (
        f"{REG} --out out --transform nonparametric --alpha 10 --max-iter 30" + " --figures" * fig
    )
    slow_out = ("out/warped.npy", "out/displacement.npz", "out/result.json") + (
        "out/registration.png",
    ) * fig
    sigint, sigkill = signal.SIGINT, getattr(signal, "SIGKILL", signal.SIGTERM)  # Windows: TERM
    dyn = "dynamics {i}/frames.npz"
    rows = [
        # help, usage, environment
        s("help", "--help", _help_printed, outputs=(), q=True),
        s("help-bad-env", "--help", _help_printed, outputs=(), env=bogus, q=True),
        s("register-help-bad-env", "register --help", _help_printed, outputs=(), env=bogus,
            backend=False),
        s("import-bad-env", "'import multireg'", None, outputs=(), prefix=("-c",), env=bogus,
            backend=False, q=True),
        s("register-help-backends", "register --help", _help_backends, outputs=(), backend=False,
            q=True),
        e("no-command", "", "command", q=True),
        e("unknown-command", "regster {i}/T.npy", "regster", q=True),
        e("unknown-option", f"{REG} --foo 1", "--foo", q=True),
        e("misspelt-option", f"{REG} --max-iters 5", "--max-iters"),
        e("missing-argument", "register {i}/T.npy", "reference"),
        e("bad-env-backend", REG, "MULTIREG_BACKEND|bogus", env=bogus, backend=False),
        s("bad-env-explicit-backend", f"{REG} --out out", _cli_shifted, env=bogus),
        e("env-backend-numpy", REG, "numpy|differentiat", env={"MULTIREG_BACKEND": "numpy"},
            backend=False),
        e("backend-numpy", f"{REG} --backend numpy", "numpy", backend=False),
        e("backend-unknown", f"{REG} --backend nosuch", "nosuch", backend=False),
        e("dtype-float16", f"{REG} --dtype float16", "float16|dtype"),
        e("device-unknown", f"{REG} --device cuda:99", "cuda|device"),
        # options
        x("levels-3-20", f"{REG} --out out --levels 3,20", "level", _cli_levels_ran),
        e("levels-0", f"{REG} --levels 0", "level"),
        e("levels-reversed", f"{REG} --levels 5,3", "level"),
        e("levels-text", f"{REG} --levels abc", "level"),
        e("max-iter-negative", f"{REG} --max-iter -1", "max-iter"),
        e("theta-negative", f"{REG} --theta -1", "theta"),
        e("tol-nan", f"{REG} --tol-j nan", "tol-j"),
        e("alpha-negative", f"{REG} --transform nonparametric --alpha -1", "alpha"),
        e("alpha-missing", f"{REG} --transform nonparametric", "alpha"),
        e("nonparametric-newton", f"{REG} --transform nonparametric --alpha 1 --method newton",
            "method|newton"),
        e("mi-gauss-newton", f"{REG} --distance mi", "mi|gauss|method"),
        e("bspline-p-zero", f"{REG} --transform bspline --p 0,0", "--p|p"),
        e("spacing-zero", f"{REG} --spacing 0,1", "spacing"),
        e("spacing-3d-for-2d", f"{REG} --spacing 1,1,1", "spacing"),
        # bad images
        e("missing-input", "register {i}/missing.npy {i}/R.npy", "missing.npy", q=True),
        e("directory-input", "register {i}/adir {i}/R.npy", "adir"),
        e("directory-named-npy", "register {i}/folder.npy {i}/R.npy", "folder.npy"),
        e("corrupt-png", "register {i}/corrupt.png {i}/R.png", "corrupt.png", needs=("PIL",)),
        e("corrupt-nifti", "register {i}/corrupt.nii.gz {i}/R.nii.gz", "corrupt.nii.gz",
            needs=("nibabel",)),
        e("truncated-nifti", "register {i}/truncated.nii.gz {i}/R.nii.gz", "truncated.nii.gz",
            needs=("nibabel",)),
        e("empty-file", "register {i}/zero.npy {i}/R.npy", "zero.npy"),
        e("text-as-npy", "register {i}/text.npy {i}/R.npy", "text.npy"),
        e("object-npy", "register {i}/object.npy {i}/R.npy", "object.npy"),
        e("npz-ambiguous", "register {i}/two_entries.npz {i}/R.npy", "two_entries.npz"),
        e("unknown-extension", "register {i}/T.xyz {i}/R.npy", "xyz"),
        e("nan-image", "register {i}/nan.npy {i}/R.npy", "nan", q=True),
        e("inf-image", "register {i}/inf.npy {i}/R.npy", "inf"),
        e("empty-array", "register {i}/empty.npy {i}/empty.npy", "empty.npy"),
        e("one-d-array", "register {i}/one_d.npy {i}/one_d.npy", "one_d.npy"),
        e("four-d-array", "register {i}/four_d.npy {i}/four_d.npy", "four_d.npy"),
        e("complex-array", "register {i}/complex.npy {i}/R.npy", "complex"),
        e("constant-images", "register {i}/const.npy {i}/const.npy", "constant|contrast"),
        x("tiny-2x2", "register {i}/tiny_T.npy {i}/tiny_R.npy --out out", "small|level|cells",
            _cli_not_blank),
        e("shape-mismatch", "register {i}/T.npy {i}/R16.npy", "shape"),
        e("dim-mismatch", "register {i}/T3d.npy {i}/R.npy", "shape|dimension"),
        e("nifti-spacing-mismatch", "register {i}/T.nii.gz {i}/R_spacing2.nii.gz",
            "omega|grid|spacing", needs=("nibabel",)),
        x("subnormal-1e-310", "register {i}/subnormal_T.npy {i}/subnormal_R.npy --out out",
            "intensit|scale|small", _cli_shifted),
        x("huge-1e300", "register {i}/huge_T.npy {i}/huge_R.npy --out out", "intensit|scale|large",
            _cli_shifted),
        x("bool-images", "register {i}/bool_T.npy {i}/bool_R.npy --out out", "bool", None,
            may_not_converge=True),
        # ordinary runs that must work and be right
        s("register-shift", f"{REG} --out out", _cli_shifted),
        s("register-self", "register {i}/R.npy {i}/R.npy --out out", _cli_identity, q=True),
        s("register-int16", "register {i}/int16_T.npy {i}/int16_R.npy --out out", _cli_shifted),
        s("register-png", "register {i}/T.png {i}/R.png --out out", _cli_shift_length,
            outputs=("out/warped.png", "out/result.json"), needs=("PIL",)),
        s("register-rgba-png", "register {i}/T_rgba.png {i}/R.png --out out", _cli_shift_length,
            outputs=("out/warped.png", "out/result.json"), needs=("PIL",)),
        s("register-nifti", "register {i}/T.nii.gz {i}/R.nii.gz --out out", _cli_shift_length,
            outputs=("out/warped.nii.gz", "out/result.json"), needs=("nibabel",)),
        s("read-only-input", "register {i}/ro_T.npy {i}/R.npy --out out", _cli_shifted),
        s("symlink-input", "register {i}/link_T.npy {i}/R.npy --out out", _cli_shifted),
        s("unicode-space-name", "register 'T ü 1.npy' {i}/R.npy --out out", _cli_shifted,
            setup=_unicode_input, protect=("T ü 1.npy",)),
        # outputs: never over an input or an existing file, checked before any work
        e("output-is-input", f"{REG} --warped {{i}}/T.npy", "input|T.npy"),
        e("output-is-input-overwrite", f"{REG} --warped {{i}}/R.npy --overwrite", "input|R.npy"),
        e("output-symlink-to-input", f"{REG} --warped link.npy --overwrite", "input|link.npy",
            setup=_link_to_input("link.npy", "T.npy"), protect=("link.npy",)),
        e("out-under-file", f"{REG} --out {{i}}/T.npy/sub", "T.npy|--out|folder|director"),
        e("warped-under-file", f"{REG} --warped {{i}}/R.npy/w.npy", "R.npy|warped|folder|director"),
        e("warped-unknown-extension", f"{REG} --warped w.xyz", "xyz"),
        e("warped-is-folder", f"{REG} --warped {{i}}/adir", "adir"),
        e("existing-outputs", f"{REG} --out out", "exists|overwrite", setup=_existing_outputs,
            protect=OUT, q=True),
        e("existing-result-only", f"{REG} --out out", "exists|overwrite", setup=_existing_result,
            protect=("out/result.json",)),
        s("existing-outputs-overwrite", f"{REG} --out out --overwrite", _cli_shifted,
            setup=_existing_outputs),
        # validate --report obeys the same rules
        e("validate-report-over-input", f"{VAL} {{i}}/T.npy {REG} --max-iter 1", "input|T.npy",
            q=True),
        e("validate-report-read-only-input", f"{VAL} {{i}}/ro_T.npy {REG} --max-iter 1",
            "input|ro_T.npy"),
        e("validate-report-existing", f"{VAL} existing.md {REG} --max-iter 1", "exists|overwrite",
            setup=_existing_notes, protect=("existing.md",)),
        e("validate-report-symlink", f"{VAL} link.md {REG} --max-iter 1", "input|exists|link.md",
            setup=_link_to_input("link.md", "R.npy"), protect=("link.md",)),
        e("validate-report-under-file", f"{VAL} {{i}}/T.npy/r.md {REG} --max-iter 1",
            "T.npy|report"),
        s("validate-report-new", f"{VAL} report.md {REG} --max-iter 1", _report_written,
            outputs=("report.md",)),
        e("validate-unknown-backend", f"validate --backends nosuch {REG}", "nosuch"),
        # interrupts: all outputs or none, no temporaries, a rerun needs no --overwrite
        case("sigint-while-writing", "interrupt", slow_run, outputs=slow_out,
            interrupt=(sigint, "write")),
        case("sigint-while-computing", "interrupt", slow_run, outputs=slow_out,
            interrupt=(sigint, "compute")),
        case("kill9-then-rerun", "success", slow_run, outputs=slow_out,
            interrupt=(sigkill, "write"), rerun=True),
        # homotopy, super-resolution, dynamics
        e("homotopy-increasing-range", "homotopy {i}/T.npy {i}/R.npy --theta-range 1,10", "theta"),
        e("homotopy-n-steps-zero", "homotopy {i}/T.npy {i}/R.npy --n-steps 0", "n-steps"),
        e("homotopy-thetas-nan", "homotopy {i}/T.npy {i}/R.npy --thetas 1,nan", "thetas"),
        e("superres-no-frames", "superres", "frames|synthetic"),
        e("superres-2d-frames", "superres {i}/frames2d.npy", "frames2d.npy"),
        e("superres-nan-frames", "superres {i}/frames_nan.npy", "nan"),
        e("superres-n-frames-zero", "superres --synthetic --n-frames 0", "n-frames"),
        e("superres-m-fine-zero", "superres --synthetic --m-fine 0,0", "m-fine"),
        e("superres-alpha-negative", "superres --synthetic --alpha -1", "alpha"),
        e("superres-tiny-frames", "superres --synthetic --m-coarse 2,2", "m-coarse|small|cells"),
        e("dynamics-no-frames", "dynamics", "frames|phantom"),
        e("dynamics-regions-no-masks", "dynamics {i}/frames_big.npz --model regions", "masks",
            fast=3.0),
        e("dynamics-masks-shape", f"{dyn} --masks {{i}}/masks_bad.npz", "masks"),
        e("dynamics-times-count", f"{dyn} --model basis --times 1,2", "times"),
        e("dynamics-n-basis-zero", f"{dyn} --model basis --n-basis 0", "n-basis"),
        e("dynamics-phantom-tiny", "dynamics --phantom --phantom-m 2,2", "phantom-m|small|cells"),
    ]  # fmt: skip
    if getattr(os, "geteuid", lambda: 0)() != 0:  # root writes into read-only folders
        rows.append(
            e(
                "out-read-only-folder",
                f"{REG} --out locked/out",
                "locked|permission|writ",
                setup=_read_only_folder,
            )
        )
    return rows


def cases(*, quick: bool = False, api: bool = True, cli: bool = True) -> list[Case]:
    """The audit's cases (``quick``: the subset that runs in well under a minute)."""
    selected = (_api_cases() if api else []) + (_cli_cases() if cli else [])
    selected = [c for c in selected if all(importlib.util.find_spec(n) for n in c.needs)]
    return [c for c in selected if c.quick] if quick else selected
