"""Fits math.rs's ERFC_A: erfc(z) ~ (1 + a1 z + ... + a7 z^7)^-16 for z >= 0.

The form is Hastings' (Abramowitz & Stegun 7.1.28 uses six terms); the coefficients are
our own. Solving for the polynomial, p(z) = erfc(z)^(-1/16) - 1 is linear in the a_i, so
the fit is a weighted least-squares problem, made near-minimax by Lawson's reweighting.
The weight is what an error in p costs GELU: d/dp (x/2 * (1 - p^-16)) = |x|/2 * 16 p^-17,
with x = z*sqrt(2). It then checks GELU in float32 arithmetic, with and without fused
multiply-adds (the relaxed and plain wasm builds), over [-12, 12].

    python3 kernels/fits/erfc_fit.py    # Debian: python3-numpy python3-scipy
"""

import numpy as np
from scipy.special import erf, erfc

F = np.float32


def fit(terms=7, z_max=6.0, rounds=60):
    z = np.linspace(0.0, z_max, 40001)
    target = erfc(z) ** (-1.0 / 16) - 1.0
    weight = 8 * np.sqrt(2) * z * erfc(z) ** (17 / 16) + 1e-12
    powers = np.stack([z**i for i in range(1, terms + 1)], 1)
    lawson = np.ones_like(z)
    for _ in range(rounds):
        w = weight * lawson
        coefficients, *_ = np.linalg.lstsq(powers * w[:, None], target * w, rcond=None)
        error = np.abs((powers @ coefficients - target) * weight)
        lawson = lawson * error / error.max() + 1e-3 * lawson
        lawson /= lawson.max()
    return coefficients, error.max()


def gelu_error_f32(coefficients, fused):
    x = np.linspace(-12, 12, 2400001).astype(F)
    exact = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
    a = [F(c) for c in coefficients]

    def madd(p, z, c):
        if fused:  # one rounding, as vfmadd
            return (p.astype(np.float64) * z + np.float64(c)).astype(F)
        return ((p * z).astype(F) + c).astype(F)

    z = np.abs((x * F(np.sqrt(0.5))).astype(F))
    p = np.full_like(z, a[-1])
    for c in a[-2::-1]:
        p = madd(p, z, c)
    p = madd(p, z, F(1))
    for _ in range(4):
        p = (p * p).astype(F)
    e = (F(1) - (F(1) / p).astype(F)).astype(F)
    e = np.where(x < 0, -e, e).astype(F)
    y = ((x * F(0.5)).astype(F) * (F(1) + e).astype(F)).astype(F)
    error = np.abs(y - exact)
    return error.max(), float(x[error.argmax()])


if __name__ == "__main__":
    coefficients, weighted = fit()
    print("ERFC_A:", [float(F(c)) for c in coefficients])
    print(f"weighted error in exact arithmetic: {weighted:.2e}")
    for fused in (True, False):
        worst, at = gelu_error_f32(coefficients, fused)
        print(f"float32 GELU, {'fused' if fused else 'unfused'}: {worst:.2e} at x = {at:.4f}")
