"""Thick-restart Lanczos with a convergence test after every product, against numpy's dense eigensolver."""

import numpy as np
import pytest

from lossmap.curvature.extremes import largest, smallest, warm_start
from lossmap.curvature.lanczos import default_min_steps, lanczos_largest
from lossmap.curvature.operator import matrix_operator
from lossmap.errors import LossmapError


def planted(n=150, seed=0, top=(10.0, 9.0, 7.5, 7.0, 6.9, 4.0), bottom=(-3.0, -2.5)):
    """A symmetric matrix with known outliers above and below a bulk in [-1, 1], and its eigendecomposition."""
    rng = np.random.default_rng(seed)
    lam = np.concatenate([top, bottom, rng.uniform(-1.0, 1.0, n - len(top) - len(bottom))])
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return (q * lam) @ q.T


def matvec_of(h):
    count = [0]

    def mv(v):
        count[0] += 1
        return h @ v

    return mv, count


@pytest.mark.parametrize("tol", [1e-3, 1e-8])
def test_each_pair_meets_the_residual_test_and_the_values_are_the_top_ones(tol):
    h = planted()
    ref_values, _ = np.linalg.eigh(h)
    mv, count = matvec_of(h)
    values, vectors, steps = lanczos_largest(mv, h.shape[0], 5, tol, np.random.default_rng(1).normal(size=150))
    assert steps == count[0]
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(5), atol=1e-12)
    for i in range(5):  # the true residual, computed here, not Lanczos' estimate of it
        assert np.linalg.norm(h @ vectors[:, i] - values[i] * vectors[:, i]) <= tol * abs(values[i]) * (1 + 1e-6)
    # an eigenvalue lies within the residual of each Ritz value, and here they are the five largest
    np.testing.assert_allclose(values, ref_values[::-1][:5], rtol=tol, atol=0)


def test_tol_zero_gives_machine_precision():
    h = planted(n=80, seed=2)
    values, vectors, _ = lanczos_largest(lambda v: h @ v, 80, 3, 0.0, None, seed=4)
    ref_values, ref_vectors = np.linalg.eigh(h)
    np.testing.assert_allclose(values, ref_values[::-1][:3], rtol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(vectors * ref_vectors[:, ::-1][:, :3], axis=0)), 1.0, atol=1e-10)


def test_repeated_eigenvalues_are_found_with_their_multiplicity():
    h = np.diag([5.0, 5.0, 5.0, 2.0, 2.0, 1.0, 0.0, 0.0, -1.0, -3.0])
    values, vectors, _ = lanczos_largest(lambda v: h @ v, 10, 4, 0.0, np.ones(10))
    np.testing.assert_allclose(values, [5.0, 5.0, 5.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(np.abs(vectors[:3, :3].T @ vectors[:3, :3]), np.eye(3), atol=1e-10)


def test_a_start_on_a_lower_eigenvector_still_finds_the_top():
    h = np.diag(np.arange(50.0))
    start = np.zeros(50)
    start[10] = 1.0  # exactly the eigenvector of 10: its Krylov space ends after one product
    values, _, _ = lanczos_largest(lambda v: h @ v, 50, 2, 1e-10, start)
    np.testing.assert_allclose(values, [49.0, 48.0], rtol=1e-10)


def test_restarts_keep_what_was_found():
    h = planted(n=200, seed=3)
    ref = np.linalg.eigvalsh(h)[::-1][:4]
    mv, count = matvec_of(h)
    values, _, steps = lanczos_largest(mv, 200, 4, 1e-10, None, ncv=7)
    np.testing.assert_allclose(values, ref, rtol=1e-9)
    assert steps == count[0] > 7  # the basis of 7 was restarted


def test_convergence_is_tested_after_every_product():
    # a start near the top eigenvector converges as soon as the test may run; a random one takes longer
    h = planted(n=300, seed=5)
    _, vectors = np.linalg.eigh(h)
    near = vectors[:, -1] + 1e-6 * np.random.default_rng(0).normal(size=300)
    _, _, warm = lanczos_largest(lambda v: h @ v, 300, 1, 1e-6, near)
    _, _, cold = lanczos_largest(lambda v: h @ v, 300, 1, 1e-6, None)
    assert warm == default_min_steps(1, 300) < cold


def test_running_out_of_restarts_is_one_line():
    h = planted(n=400, seed=6)
    with pytest.raises(LossmapError, match="restarts") as err:
        lanczos_largest(lambda v: h @ v, 400, 3, 1e-14, None, ncv=5, maxiter=1)
    assert "\n" not in str(err.value)


def test_largest_and_smallest_count_their_products_on_the_operator():
    h = planted(n=120, seed=7)
    ref = np.linalg.eigvalsh(h)
    op = matrix_operator(h)
    top = largest(op, 3, tol=1e-9)
    assert top.hvps == op.count
    np.testing.assert_allclose(top.values, ref[::-1][:3], rtol=1e-8)
    low = smallest(op, 2, tol=1e-9, sigma=float(top.values[0]))
    np.testing.assert_allclose(low.values, ref[:2], rtol=1e-8)
    assert low.hvps == op.count - top.hvps


def test_warm_start_keeps_every_direction_of_a_random_start():
    v = np.zeros(6)
    v[2] = 4.0
    mixed = warm_start(v, 0, "top")
    assert np.all(mixed != 0) and np.argmax(np.abs(mixed)) == 2
    assert warm_start(None, 0, "top") is None and warm_start(np.zeros(3), 0, "top") is None
