"""The one source of Adams coefficients (optsample/samplers/adams.py) and its users.

Expected tables are transcribed from the literature, not produced by the code: Adams-Bashforth and
Adams-Moulton of orders 1-4 (Hairer, Norsett & Wanner, "Solving ODEs I", III.1, Tables 1.1 / 1.2; PNDM,
Liu et al. 2022, eq. 12 for AB4) and GHVB's integer table (Wizadwongsa et al. 2024, momentum_scheduler.py
``AdamBmixer``, weight_j = (c_j + e_j b) / (den b)).
"""

import random
from fractions import Fraction as F

import pytest
import torch
from numpy.polynomial import Polynomial

import optsample
from optsample.models import GaussianMixture
from optsample.samplers import adams, classic, multistep, transforms

AB_TEXTBOOK = {1: (F(1),), 2: (F(3, 2), F(-1, 2)), 3: (F(23, 12), F(-16, 12), F(5, 12)),
               4: (F(55, 24), F(-59, 24), F(37, 24), F(-9, 24))}
AM_TEXTBOOK = {1: (F(1),), 2: (F(1, 2), F(1, 2)), 3: (F(5, 12), F(8, 12), F(-1, 12)),
               4: (F(9, 24), F(19, 24), F(-5, 24), F(1, 24))}
GHVB_PUBLISHED = {1: (1, [(0, 1)]), 2: (2, [(2, 1), (-2, 1)]), 3: (12, [(18, 5), (-24, 8), (6, -1)]),
                  4: (24, [(46, 9), (-78, 19), (42, -5), (-10, 1)])}


def test_fixed_tables_are_the_textbook_ones():
    assert adams.AB_FRACTIONS == AB_TEXTBOOK
    assert adams.AM_FRACTIONS == AM_TEXTBOOK
    assert adams.AB_COEFFICIENTS == {k: tuple(float(c) for c in v) for k, v in AB_TEXTBOOK.items()}
    assert adams.GHVB_WEIGHTS == GHVB_PUBLISHED


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ghvb_at_b_1_is_adams_bashforth(order):
    """weight_j(1) = (c_j + e_j) / den must be the AB weight, as a float bit for bit."""
    den, table = adams.GHVB_WEIGHTS[order]
    assert [(c + e * 1.0) / (den * 1.0) for c, e in table] == list(adams.AB_COEFFICIENTS[order])


def test_the_samplers_and_rules_read_the_one_table():
    assert multistep.AB_COEFFICIENTS is adams.AB_COEFFICIENTS
    assert transforms.AB_COEFFICIENTS is adams.AB_COEFFICIENTS
    assert transforms.ghvb_combination is adams.ghvb_combination
    assert classic.lms_coefficients is adams.lms_coefficients


def test_changing_the_table_changes_every_fixed_step_user(monkeypatch):
    """ipndm(order 2), plms_momentum(order 2, beta 0) and plms all follow an edit of AB_COEFFICIENTS[2]."""
    model = GaussianMixture.random(dim=4, components=3, seed=1)
    sigmas = optsample.samplers.core.dummy_schedule(6)[:-1]
    x = optsample.initial_noise(range(3), (4,), dtype=torch.float64) * 10

    def run():
        return [optsample.sample(name, model, x, sigmas, **hp) for name, hp in
                [("ipndm", {"order": 2}), ("plms_momentum", {"order": 2, "beta": 0.0}), ("plms", {})]]

    before = run()
    assert torch.equal(before[0], before[1])  # ipndm == plms_momentum(beta 0) bit for bit
    monkeypatch.setitem(adams.AB_COEFFICIENTS, 2, (2.0, -1.0))
    after = run()
    assert torch.equal(after[0], after[1])
    assert all(not torch.equal(b, a) for b, a in zip(before, after))


def _numpy_lms_coefficients(nodes, sigma_next):
    """The implementation adams.lagrange_weights replaced (numpy Polynomial integration), transcribed."""
    coeffs = []
    for j, node_j in enumerate(nodes):
        basis = Polynomial([1.0])
        for k, node_k in enumerate(nodes):
            if k != j:
                basis = basis * Polynomial([-node_k, 1.0]) / (node_j - node_k)
        antiderivative = basis.integ()
        coeffs.append(float(antiderivative(sigma_next) - antiderivative(nodes[0])))
    return coeffs


def test_lms_coefficients_equal_the_numpy_integration_bitwise():
    rng = random.Random(0)
    for _ in range(500):
        order = rng.randint(1, 8)
        sigmas = [rng.lognormvariate(0.0, 2.0) for _ in range(order)]
        nodes = sorted(sigmas[:order])  # newest (smallest sigma) first
        sigma_next = nodes[0] * rng.random()
        assert adams.lms_coefficients(nodes, sigma_next) == _numpy_lms_coefficients(nodes, sigma_next)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_lms_on_equal_steps_is_the_fixed_table(order):
    """Nodes sigma_i + k h, step to sigma_i - h: weights = -h * AB (exact in fractions)."""
    sigma, h = F(7, 3), F(1, 5)
    nodes = [sigma + k * h for k in range(order)]
    assert adams.lagrange_weights(nodes, sigma, sigma - h) == [-h * c for c in AB_TEXTBOOK[order]]
