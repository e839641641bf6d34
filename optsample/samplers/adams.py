"""The Adams-Bashforth (and Adams-Moulton) coefficients, in one place: ``lms``, ``plms`` / ``ipndm`` and the
``ghvb`` / ``plms_momentum`` rules all read them from here.

One formula gives all of them (Hairer, Norsett & Wanner, "Solving ODEs I", III.1, eq. 1.5 / 1.8; k-diffusion
``linear_multistep_coeff``): the weight of the value at node s_j for a step from ``start`` to ``end`` is

    c_j = integral_start^end l_j(tau) dtau,   l_j(tau) = prod_{k != j} (tau - s_k) / (s_j - s_k),

the Lagrange basis on the nodes s_0 (the newest), s_1, ... Adams-Bashforth integrates from the newest node
s_0 onwards (explicit); Adams-Moulton includes the step's end point as a node (implicit). :func:`lagrange_weights`
computes it for any number type: in floats for ``lms``'s variable sigma steps, in exact fractions on unit
steps for the fixed tables, which are then the textbook ones (1; 3/2, -1/2; 23/12, -16/12, 5/12;
55/24, -59/24, 37/24, -9/24; PNDM, Liu et al. 2022, eq. 12) rounded once to floats.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

MAX_FIXED_ORDER = 4  # PLMS / iPNDM / GHVB use orders 1-4


def lagrange_weights(nodes: list, start, end) -> list:
    """[integral_start^end l_j(tau) dtau for each node s_j] (module doc), in the number type of the inputs.

    The polynomials are kept as coefficient lists (lowest degree first); the operations are those of
    numpy's ``Polynomial`` (product with (tau - s_k), division by (s_j - s_k), ``integ``, Horner
    evaluation), so float results equal the numpy implementation this replaced, bit for bit.
    """
    weights = []
    for j, node_j in enumerate(nodes):
        basis = [nodes[0] * 0 + 1]
        for k, node_k in enumerate(nodes):
            if k != j:
                # (tau - s_k) * basis, then / (s_j - s_k)
                shifted = [basis[0] * -node_k] + [basis[i] * -node_k + basis[i - 1] for i in range(1, len(basis))]
                basis = [c / (node_j - node_k) for c in shifted + [basis[-1]]]
        antiderivative = [basis[0] * 0 + 0] + [c / (i + 1) for i, c in enumerate(basis)]  # constant +0, as numpy's
        weights.append(_horner(antiderivative, end) - _horner(antiderivative, start))
    return weights


def _horner(coefficients: list, t):
    """sum_i coefficients[i] t^i by Horner's rule (numpy ``polyval``'s order of operations)."""
    value = coefficients[-1] + t * 0
    for c in reversed(coefficients[:-1]):
        value = c + value * t
    return value


def lms_coefficients(sigma_history: list[float], sigma_next: float) -> list[float]:
    """Variable-step Adams-Bashforth weights in sigma on the nodes sigma_i, sigma_{i-1}, ... (newest first), for
    the step sigma_i -> sigma_next (k-diffusion ``linear_multistep_coeff``, integrated exactly instead of by scipy quad).
    Python floats in, floats out; 0-dim tensors (sigmas that carry gradients, see core.steps) stay tensors."""
    weights = lagrange_weights(sigma_history, sigma_history[0], sigma_next)
    return [c if isinstance(c, torch.Tensor) else float(c) for c in weights]


def _fixed_step(order: int, implicit: bool) -> tuple[Fraction, ...]:
    """Exact weights for unit steps 0 -> 1: AB on the nodes 0, -1, ..., AM on 1, 0, -1, ... (newest first)."""
    newest = 1 if implicit else 0
    return tuple(lagrange_weights([Fraction(newest - j) for j in range(order)], Fraction(0), Fraction(1)))


AB_FRACTIONS = {order: _fixed_step(order, implicit=False) for order in range(1, MAX_FIXED_ORDER + 1)}
AM_FRACTIONS = {order: _fixed_step(order, implicit=True) for order in range(1, MAX_FIXED_ORDER + 1)}

# Adams-Bashforth weights for equal steps, newest first, as floats (PLMS / iPNDM).
AB_COEFFICIENTS = {order: tuple(float(c) for c in weights) for order, weights in AB_FRACTIONS.items()}


def _ghvb_table(order: int) -> tuple[int, list[tuple[int, int]]]:
    """(den, [(c_j, e_j)]) with GHVB's weight_j(b) = (c_j + e_j b) / (den b) (Wizadwongsa et al. 2024, eq. 14;
    momentum_scheduler.py ``AdamBmixer``): e_j / den is Adams-Moulton's weight and c_j / den = AB_j - AM_j, so
    weight_j(b) = AM_j + (AB_j - AM_j) / b, which is Adams-Bashforth at b = 1."""
    ab, am = AB_FRACTIONS[order], AM_FRACTIONS[order]
    den = math.lcm(*(w.denominator for w in ab + am))
    return den, [(int((a - m) * den), int(m * den)) for a, m in zip(ab, am)]


GHVB_WEIGHTS = {order: _ghvb_table(order) for order in range(1, MAX_FIXED_ORDER + 1)}


def combine(weights, values_newest_first) -> torch.Tensor:
    """sum_j weights[j] * values[j], the newest value first (the combination of every Adams method)."""
    total = None
    for weight, value in zip(weights, values_newest_first):
        term = value * weight
        total = term if total is None else total + term
    return total


def ghvb_combination(values_newest_first: list, b: float) -> torch.Tensor:
    """sum_j weight_j(b) values[j] of GHVB (``GHVB_WEIGHTS``), order = len(values) (lower while warming up)."""
    den, table = GHVB_WEIGHTS[len(values_newest_first)]
    return combine([(c + e * b) / (den * b) for c, e in table], values_newest_first)
