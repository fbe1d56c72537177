"""multireg.apply / transform_points: conventions by hand, labels kept, images ↔ points, inverses.

The registrations are tiny (24×20, linear image model so that ``apply(..., order="linear")``
must reproduce ``result.warped`` to round-off) and shared by module-scoped fixtures.
"""

from __future__ import annotations

import numpy as np
import pytest

import multireg
from multireg import Affine, BSpline, Domain, Translation
from multireg.data import blobs
from multireg.workflow.apply import (
    Map,
    apply,
    index_to_world,
    sample,
    transform_points,
    world_to_index,
)
from tests.cli._helpers import _run as _cli  # main(argv) -> (code, stdout, stderr)
from tests.conftest import AD_BACKENDS

OMEGA = (0.0, 3.0, -1.0, 1.5)  # h = (1/8, 1/8); a non-square box catches swapped axes
T, DOMAIN = blobs((24, 20), OMEGA, seed=2)
R, _ = blobs((24, 20), OMEGA, seed=2)


def _smooth_field(domain: Domain, amplitude: float) -> np.ndarray:
    """A smooth displacement (world units), shape (*m, d); its gradient is ≤ ~amplitude·2π/L."""
    x = domain.cell_centers().reshape(*domain.m, domain.dim)
    L = np.asarray(domain.extent)
    t = (x - np.asarray(domain.lower)) / L
    u = np.stack(
        [np.sin(2 * np.pi * t[..., 1]) * L[0], np.cos(np.pi * t[..., 0]) * t[..., 1] * L[1]],
        axis=-1,
    )
    return amplitude * u


# ------------------------------------------------------------------------- by hand


@pytest.mark.parametrize("order", ["nearest", "linear", "cubic"])
def test_translation_by_one_cell_shifts_by_one_voxel(order):
    """y(x) = x + (h1, 0): the warped image at voxel (i, j) is T[i + 1, j] (world ≠ index)."""
    mp = Map(DOMAIN, Translation(2), np.array([DOMAIN.h[0], 0.0]))
    out = apply(mp, T, order=order)
    np.testing.assert_allclose(out[:-1], T[1:], atol=1e-12)


def test_index_world_round_trip_and_values():
    i = np.array([[0.0, 0.0], [23.0, 19.0], [1.5, 2.25]])
    x = index_to_world(i, DOMAIN)
    np.testing.assert_allclose(x[0], [0.0625, -1.0 + 0.0625])
    np.testing.assert_allclose(x[1], [3.0 - 0.0625, 1.5 - 0.0625])
    np.testing.assert_allclose(world_to_index(x, DOMAIN), i, atol=1e-14)


def test_labels_kept_exactly():
    labels = np.zeros(DOMAIN.m, dtype=np.int16)
    labels[4:12, 3:9] = 3
    labels[10:20, 8:17] = 7
    labels[15:18, 2:5] = 12
    mp = Map(DOMAIN, Affine(2), np.array([0.97, 0.05, 0.1, -0.04, 1.02, 0.05]),
             _smooth_field(DOMAIN, 0.01))  # fmt: skip
    out = apply(mp, labels, order="nearest")
    assert out.dtype == labels.dtype
    assert set(np.unique(out)) <= set(np.unique(labels))
    assert set(np.unique(out)) == {0, 3, 7, 12}  # small motion: every label survives
    # linear interpolation would invent values between the labels: the test can tell
    assert not set(np.unique(apply(mp, labels, order="linear"))) <= set(np.unique(labels))


def test_nearest_fill_outside():
    mp = Map(DOMAIN, Translation(2), np.array([10.0, 0.0]))  # everything maps outside
    out = apply(mp, T, order="nearest", fill=-1.0)
    assert np.all(out == -1.0)


def test_composition_is_parametric_plus_displacement():
    A = np.array([[1.05, 0.1], [-0.05, 0.95]])
    b = np.array([0.1, -0.05])
    w = np.concatenate([np.c_[A, b][0], np.c_[A, b][1]])
    u = _smooth_field(DOMAIN, 0.02)
    mp = Map(DOMAIN, Affine(2), w, u)
    x = DOMAIN.cell_centers()
    np.testing.assert_allclose(mp(x), x @ A.T + b + u.reshape(-1, 2), atol=1e-13)
    # between centres: u interpolated d-linearly; beyond the outer centres: held constant
    far = np.array([[-5.0, -1.0 + 10.5 * DOMAIN.h[1]]])  # beyond axis 0, at centre 10 of axis 1
    np.testing.assert_allclose(mp(far), far @ A.T + b + u[0, 10][None], atol=1e-13)


def test_bspline_map_matches_the_transform():
    trafo = BSpline(OMEGA, (4, 3))
    w = np.random.default_rng(0).normal(scale=0.01, size=trafo.n_params)
    x = DOMAIN.cell_centers()
    np.testing.assert_allclose(transform_points((trafo, w), x).points, trafo(w, x), atol=0)


# ------------------------------------------------------------------------ inverses


def test_affine_inverse_is_exact():
    w = np.array([1.1, 0.2, 0.3, -0.1, 0.9, -0.2])
    z = np.random.default_rng(1).uniform(-1, 3, size=(7, 2))
    back = transform_points((Affine(2), w), z, inverse=True)
    assert back.converged and back.iterations == 0
    np.testing.assert_allclose(Affine(2)(w, back.points), z, atol=1e-13)
    assert back.max_residual < 1e-13


def test_nonparametric_inverse_by_fixed_point():
    mp = Map(DOMAIN, Affine(2), np.array([1.02, 0.03, 0.1, -0.02, 0.98, 0.0]),
             _smooth_field(DOMAIN, 0.02))  # fmt: skip
    z = index_to_world(np.random.default_rng(2).uniform(0, 18, size=(20, 2)), DOMAIN)
    back = transform_points(mp, z, inverse=True, tol=1e-10)
    assert back.converged and back.iterations > 0
    assert back.max_residual <= 1e-10
    np.testing.assert_allclose(mp(back.points), z, atol=1e-10)
    # and the other way round: inverse ∘ forward = identity
    x = back.points
    again = transform_points(mp, transform_points(mp, x), inverse=True, tol=1e-10)
    np.testing.assert_allclose(again.points, x, atol=1e-9)


def test_folding_map_inverse_reports_no_convergence():
    mp = Map(DOMAIN, displacement=_smooth_field(DOMAIN, 0.6))  # |∇u| > 1: folds
    z = DOMAIN.cell_centers()[::7]
    back = transform_points(mp, z, inverse=True, max_iter=30)
    assert not back.converged
    assert back.max_residual > 1e-6


# ------------------------------------------------------------ against register()


def _registers(test):
    """Slow where JAX alone runs the registrations of ``results`` and ``cli_runs`` (it compiles
    them for 15-30 s); torch runs them in seconds."""
    return pytest.mark.slow(test) if "torch" not in AD_BACKENDS else test


@pytest.fixture(scope="module")
def results():
    names = sorted(AD_BACKENDS, key=lambda n: n != "torch")  # torch compiles nothing: quicker
    if not names:
        pytest.skip("needs a differentiating backend (torch or jax)")
    bk = multireg.get_backend(names[0])
    shift = Map(DOMAIN, Affine(2), np.array([1.03, 0.02, -0.06, -0.02, 0.98, 0.04]))
    Rw = apply(shift, T, order="cubic")
    opts = dict(image_model="linear", backend=bk, max_iter=5)
    par = multireg.register(T, Rw, OMEGA, transform="affine", **opts)
    nonpar = multireg.register(T, Rw, OMEGA, transform="nonparametric", alpha=1.0, levels=2, **opts)
    return par, nonpar


@_registers
def test_apply_equals_result_warped(results):
    for res in results:
        warped = np.asarray(multireg._checks.to_host(res.warped))
        np.testing.assert_allclose(apply(res, T, order="linear"), warped, atol=1e-12)


@_registers
def test_nonparametric_result_map_at_centres_is_result_y(results):
    _, res = results
    mp = Map.from_result(res)
    assert mp.transform is not None and mp.displacement is not None  # both parts
    y = np.asarray(multireg._checks.to_host(res.y))
    np.testing.assert_allclose(mp(DOMAIN.cell_centers()), y, atol=1e-12)


@_registers
@pytest.mark.parametrize("order", ["nearest", "linear", "cubic"])
def test_warping_then_sampling_equals_mapping_points_then_sampling(results, order):
    """Landmarks x at reference voxels: warped[i] == T(y(x_i)) (one map for images and points)."""
    for res in results:
        idx = np.array([[3, 4], [10, 11], [20, 2], [7, 17]])
        x = index_to_world(idx, DOMAIN)
        y = transform_points(res, x).points
        warped = apply(res, T, order=order)
        np.testing.assert_allclose(
            warped[tuple(idx.T)], sample(T, DOMAIN, y, order=order), atol=1e-12
        )


@_registers
def test_apply_onto_another_grid(results):
    """like=: a finer output grid over the same box samples the same continuous warped image."""
    par, _ = results
    fine = Domain(OMEGA, (48, 40))
    out = apply(par, T, order="linear", like=fine)
    y = transform_points(par, fine.cell_centers()).points
    np.testing.assert_allclose(out.ravel(), sample(T, DOMAIN, y), atol=1e-12)


# ---------------------------------------------------------------------- bad input


def test_bad_input_names_the_argument():
    mp = Map(DOMAIN, Translation(2), np.zeros(2))
    with pytest.raises(ValueError, match="order"):
        apply(mp, T, order="quintic")
    with pytest.raises(ValueError, match="points"):
        transform_points(mp, np.zeros((3, 3)))
    with pytest.raises(TypeError, match="transform_or_result"):
        apply(42, T)
    with pytest.raises(ValueError, match="displacement"):
        Map(DOMAIN, displacement=np.zeros((3, 3, 2)))
    with pytest.raises(ValueError, match="w must have shape"):
        Map(DOMAIN, Affine(2), np.zeros(3))
    with pytest.raises(ValueError, match="fill"):  # -1 would wrap round to 255
        apply(mp, np.zeros(DOMAIN.m, np.uint8), order="nearest", fill=-1)


def test_as_map_reads_itk_files_through_the_itk_module(tmp_path):
    """apply.as_map reads an ITK transform file by handing multireg.workflow.maps the ITK reader
    (the imports point apply -> itk -> maps); maps alone reads no foreign file and says so."""
    from multireg.workflow import itk, maps
    from multireg.workflow.apply import as_map

    mp = Map(None, Affine(2), np.array([1.1, 0.1, 0.3, -0.05, 0.9, -0.2]))
    path = itk.write_transform(tmp_path / "a.tfm", mp)
    got = as_map(path)
    np.testing.assert_allclose(got.linear_part()[0], mp.linear_part()[0], rtol=1e-12)
    np.testing.assert_allclose(got.linear_part()[1], mp.linear_part()[1], rtol=1e-12)
    with pytest.raises(ValueError, match="transform_or_result"):
        maps.as_map(path)


# ------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """'multireg register' (affine and nonparametric, linear model) on .npy files."""
    from multireg.cli import main

    if not AD_BACKENDS:
        pytest.skip("needs a differentiating backend (torch or jax)")
    backend = sorted(AD_BACKENDS, key=lambda n: n != "torch")[0]
    folder = tmp_path_factory.mktemp("cli")
    omega = (0.0, 24.0, 0.0, 20.0)  # .npy: pixel units
    T_px, dom = blobs((24, 20), omega, seed=2)
    shift = Map(dom, Affine(2), np.array([1.03, 0.02, -0.6, -0.02, 0.98, 0.4]))
    np.save(folder / "T.npy", T_px)
    np.save(folder / "R.npy", apply(shift, T_px, order="cubic"))
    common = ["--image-model", "linear", "--backend", backend, "-q", "--max-iter", "5"]
    common += ["--levels", "1"]  # one level: fewer kernels for JAX to compile
    runs = {}
    for name, extra in (
        ("affine", ["--transform", "affine"]),
        ("bspline", ["--transform", "bspline", "--p", "5,4"]),  # FAIR's layout in result.json
        ("nonparametric", ["--transform", "nonparametric", "--alpha", "1"]),
    ):
        out = folder / name
        argv = ["register", folder / "T.npy", folder / "R.npy", "--out", out, *common, *extra]
        assert main([str(a) for a in argv]) in (0, 3)
        runs[name] = out
    return folder, T_px, runs


@_registers
@pytest.mark.parametrize("name", ["affine", "bspline", "nonparametric"])
def test_cli_apply_reproduces_the_registration_s_warped_image(cli_runs, tmp_path, capsys, name):
    folder, T_px, runs = cli_runs
    code, _, err = _cli(capsys, "apply", runs[name], folder / "T.npy", "--out", tmp_path / "a")
    assert code == 0, err
    warped = np.load(runs[name] / "warped.npy")
    np.testing.assert_allclose(np.load(tmp_path / "a" / "applied.npy"), warped, atol=1e-12)
    # Map.load reads the same map that the API would apply
    np.testing.assert_allclose(apply(runs[name], T_px), warped, atol=1e-12)


@_registers
def test_cli_apply_labels_and_points(cli_runs, tmp_path, capsys):
    _, _, runs = cli_runs
    labels = (np.arange(24)[:, None] // 6 + 3 * (np.arange(20)[None, :] // 7)).astype(np.int32)
    np.save(tmp_path / "labels.npy", labels)
    pts = np.array([[3.5, 4.25], [12.0, 10.0], [20.5, 2.5]])
    np.savetxt(tmp_path / "pts.csv", pts, delimiter=",", header="x1,x2")
    out = tmp_path / "out"
    argv = ["apply", runs["nonparametric"], tmp_path / "labels.npy", "--order", "nearest"]
    code, stdout, err = _cli(capsys, *argv, "--points", tmp_path / "pts.csv", "--out", out)
    assert code == 0, err
    assert "3 points mapped" in stdout
    got = np.load(out / "applied.npy")
    assert set(np.unique(got)) <= set(np.unique(labels))
    mapped = np.loadtxt(out / "points.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(mapped, transform_points(runs["nonparametric"], pts).points)
    # and back: --inverse recovers the landmarks
    code, stdout, err = _cli(
        capsys, "apply", runs["nonparametric"], tmp_path / "labels.npy", "--points",
        out / "points.csv", "--inverse", "--out", tmp_path / "back",
    )  # fmt: skip
    assert code == 0, err
    back = np.loadtxt(tmp_path / "back" / "points.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(back, pts, atol=1e-5)


@_registers
def test_cli_apply_bad_input_is_one_line(cli_runs, tmp_path, capsys):
    folder, _, runs = cli_runs
    code, _, err = _cli(capsys, "apply", tmp_path / "missing", folder / "T.npy")
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(capsys, "apply", runs["affine"], folder / "T.npy", "--inverse")
    assert code == 2 and "--inverse applies to --points" in err
    assert not (tmp_path / "multireg-apply").exists()


@_registers
def test_cli_apply_exports_for_itk(cli_runs, tmp_path, capsys):
    """--export: a linear run as an ITK transform file, a nonparametric one as a field; both
    read back (by SimpleITK and multireg.itk) as the run's map."""
    sitk = pytest.importorskip("SimpleITK")
    from multireg.workflow import itk

    _, _, runs = cli_runs
    x = DOMAIN.cell_centers()[::17] * 8  # points of the pixel-unit domain (h = 1)
    F = np.diag([-1.0, -1.0])
    code, _, err = _cli(capsys, "apply", runs["affine"], "--export", tmp_path / "a.tfm")
    assert code == 0, err
    tx = sitk.ReadTransform(str(tmp_path / "a.tfm"))
    want = Map.load(runs["affine"])(x)
    np.testing.assert_allclose([F @ tx.TransformPoint(tuple(F @ p)) for p in x], want, atol=1e-9)
    code, _, err = _cli(capsys, "apply", runs["nonparametric"], "--export", tmp_path / "w.nii.gz")
    assert code == 0, err
    centres = Map.load(runs["nonparametric"]).domain.cell_centers()
    np.testing.assert_allclose(
        itk.read_displacement(tmp_path / "w.nii.gz")(centres),
        Map.load(runs["nonparametric"])(centres),
        atol=1e-9,
    )
    code, _, err = _cli(capsys, "apply", runs["nonparametric"], "--export", tmp_path / "n.tfm")
    assert code == 2 and "only a linear map" in err and not (tmp_path / "n.tfm").exists()
    code, _, err = _cli(capsys, "apply", runs["affine"])
    assert code == 2 and "nothing to apply" in err
