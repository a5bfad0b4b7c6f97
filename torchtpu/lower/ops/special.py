"""Special functions: polygamma, Bessel and Airy functions, orthogonal polynomials.

The polynomials take their degree ``n`` as a tensor, so they run the three-term
recurrence in a ``while_loop`` up to the largest degree present, picking each
element's value when the loop reaches its own degree.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import torch
from jax import lax

from torchtpu.lower.dtypes import Promote
from torchtpu.lower.ops._util import aten
from torchtpu.lower.registry import register

INT_TO_FLOAT = Promote.INT_TO_FLOAT


@register(aten.polygamma.default, promote=INT_TO_FLOAT, promote_args=(1,))
def polygamma(n, x):
    if n == 0:
        return jnp.where(x == 0, -jnp.inf, jax.scipy.special.digamma(x))
    # JAX's Hurwitz zeta loses all accuracy for q below about -8, so shift x
    # up with psi_n(x) = psi_n(x + 1) + (-1)^(n+1) n! / x^(n+1) first.
    sign_fact = (-1.0) ** (n + 1) * math.factorial(n)

    def body(state):
        x_, acc = state
        low = x_ < 1
        acc = acc + jnp.where(low, sign_fact / x_ ** (n + 1), 0)
        return jnp.where(low, x_ + 1, x_), acc

    x_, acc = lax.while_loop(lambda s: jnp.any(s[0] < 1), body, (x, jnp.zeros_like(x)))
    order = jnp.asarray(n, jnp.int32)
    return (jax.scipy.special.polygamma(order, x_) + acc).astype(x.dtype)


@register(aten.special_modified_bessel_i0.default, promote=INT_TO_FLOAT)
def modified_bessel_i0(x):
    return jax.scipy.special.i0(x)


@register(aten.special_modified_bessel_i1.default, promote=INT_TO_FLOAT)
def modified_bessel_i1(x):
    return jax.scipy.special.i1(x)


def _recurrence(x, n, p1, step):
    """p_n(x) from p_0 = 1, p_1 and p_{k+1} = step(k, p_k, p_{k-1}); 0 for n < 0."""
    # PyTorch truncates the degree to an integer; NaN counts as negative.
    x, n = jnp.broadcast_arrays(x, jnp.trunc(jnp.asarray(n, x.dtype)))
    n = jnp.where(jnp.isnan(n), -1, n)
    p0, p1 = jnp.ones_like(x), jnp.broadcast_to(p1, x.shape)
    out = jnp.where(n == 0, p0, jnp.where(n == 1, p1, jnp.zeros_like(x)))
    top = jnp.max(n, initial=0).astype(jnp.int64)

    def body(state):
        k, prev, cur, out = state
        nxt = step(k.astype(x.dtype), cur, prev)
        return k + 1, cur, nxt, jnp.where(n == k + 1, nxt, out)

    return lax.while_loop(lambda s: s[0] < top, body, (jnp.int64(1), p0, p1, out))[3]


def _chebyshev(first):
    return lambda x, n: _recurrence(x, n, first(x), lambda k, c, p: 2 * x * c - p)


_POLYNOMIALS = {
    aten.special_chebyshev_polynomial_t.default: _chebyshev(lambda x: x),
    aten.special_chebyshev_polynomial_u.default: _chebyshev(lambda x: 2 * x),
    aten.special_chebyshev_polynomial_v.default: _chebyshev(lambda x: 2 * x - 1),
    aten.special_chebyshev_polynomial_w.default: _chebyshev(lambda x: 2 * x + 1),
    aten.special_hermite_polynomial_h.default: lambda x, n: _recurrence(
        x, n, 2 * x, lambda k, c, p: 2 * x * c - 2 * k * p
    ),
    aten.special_hermite_polynomial_he.default: lambda x, n: _recurrence(
        x, n, x, lambda k, c, p: x * c - k * p
    ),
    aten.special_laguerre_polynomial_l.default: lambda x, n: _recurrence(
        x, n, 1 - x, lambda k, c, p: ((2 * k + 1 - x) * c - k * p) / (k + 1)
    ),
    aten.special_legendre_polynomial_p.default: lambda x, n: _recurrence(
        x, n, x, lambda k, c, p: ((2 * k + 1) * x * c - k * p) / (k + 1)
    ),
}
_SHIFTED = {
    aten.special_shifted_chebyshev_polynomial_t.default: aten.special_chebyshev_polynomial_t,
    aten.special_shifted_chebyshev_polynomial_u.default: aten.special_chebyshev_polynomial_u,
    aten.special_shifted_chebyshev_polynomial_v.default: aten.special_chebyshev_polynomial_v,
    aten.special_shifted_chebyshev_polynomial_w.default: aten.special_chebyshev_polynomial_w,
}
for _op, _fn in _POLYNOMIALS.items():
    register(_op, promote=INT_TO_FLOAT)(lambda x, n, _fn=_fn: _fn(x, n))
for _op, _base in _SHIFTED.items():
    _fn = _POLYNOMIALS[_base.default]
    register(_op, promote=INT_TO_FLOAT)(lambda x, n, _fn=_fn: _fn(2 * x - 1, n))


# --- prims that PyTorch's decompositions of special functions end in --------------------

prims = torch.ops.prims
_PRIMS_UNARY = {
    prims.bessel_i0.default: jax.scipy.special.i0,
    prims.bessel_i1.default: jax.scipy.special.i1,
    prims.bessel_i0e.default: jax.scipy.special.i0e,
    prims.bessel_i1e.default: jax.scipy.special.i1e,
    prims.ndtri.default: jax.scipy.special.ndtri,
    prims.erfcx.default: jax.scipy.special.erfcx,
}
for _op, _fn in _PRIMS_UNARY.items():
    register(_op)(lambda x, _fn=_fn: _fn(x))


@register(prims.spherical_bessel_j0.default)
def spherical_bessel_j0(x):
    small = jnp.abs(x) < 0.5
    safe = jnp.where(small, 1.0, x)
    series = 1 - x * x / 6 * (1 - x * x / 20 * (1 - x * x / 42))
    return jnp.where(small, series, jnp.sin(safe) / safe)


@register(prims.zeta.default)
def zeta(x, q):
    # Cephes (and PyTorch) is undefined below x = 1, where JAX returns inf at q = 0.
    return jnp.where(x < 1, jnp.nan, jax.scipy.special.zeta(x, q))


@register(prims.igamma.default)
def igamma(a, x):
    return jax.scipy.special.gammainc(a, x)


@register(prims.igammac.default)
def igammac(a, x):
    return jax.scipy.special.gammaincc(a, x)


@register(prims.nextafter.default)
def nextafter(x, y):
    return jnp.nextafter(x, y)


@register(prims.gcd.default)
def prims_gcd(x, y):
    return jnp.gcd(x, y)


@register(prims.frexp.default)
def frexp(x):
    mantissa, exponent = jnp.frexp(x)
    return mantissa, exponent.astype(jnp.int32)


# --- Bessel and Airy functions JAX lacks --------------------------------------------------
#
# Ports of the Cephes approximations behind PyTorch's CPU kernels
# (aten/src/ATen/native/Math.h), branch for branch and with the same coefficient tables, so
# float32 results agree with eager PyTorch to rounding. PyTorch evaluates every denominator
# with plain Horner steps (Cephes's p1evl adds an implicit leading 1): so do we. All
# branches are evaluated, each on its own inputs and a harmless point elsewhere, so a NaN or
# an infinite derivative from the branch not taken cannot leak through jnp.where.

# fmt: off
_J0_PP = (
    7.96936729297347051624e-04, 8.28352392107440799803e-02, 1.23953371646414299388e+00,
    5.44725003058768775090e+00, 8.74716500199817011941e+00, 5.30324038235394892183e+00,
    9.99999999999999997821e-01,
)
_J0_PQ = (
    9.24408810558863637013e-04, 8.56288474354474431428e-02, 1.25352743901058953537e+00,
    5.47097740330417105182e+00, 8.76190883237069594232e+00, 5.30605288235394617618e+00,
    1.00000000000000000218e+00,
)
_J0_QP = (
    -1.13663838898469149931e-02, -1.28252718670509318512e+00, -1.95539544257735972385e+01,
    -9.32060152123768231369e+01, -1.77681167980488050595e+02, -1.47077505154951170175e+02,
    -5.14105326766599330220e+01, -6.05014350600728481186e+00,
)
_J0_QQ = (
    6.43178256118178023184e+01, 8.56430025976980587198e+02, 3.88240183605401609683e+03,
    7.24046774195652478189e+03, 5.93072701187316984827e+03, 2.06209331660327847417e+03,
    2.42005740240291393179e+02,
)
_J0_RP = (
    -4.79443220978201773821e+09, 1.95617491946556577543e+12, -2.49248344360967716204e+14,
    9.70862251047306323952e+15,
)
_J0_RQ = (
    4.99563147152651017219e+02, 1.73785401676374683123e+05, 4.84409658339962045305e+07,
    1.11855537045356834862e+10, 2.11277520115489217587e+12, 3.10518229857422583814e+14,
    3.18121955943204943306e+16, 1.71086294081043136091e+18,
)
_Y0_YP = (
    1.55924367855235737965e+04, -1.46639295903971606143e+07, 5.43526477051876500413e+09,
    -9.82136065717911466409e+11, 8.75906394395366999549e+13, -3.46628303384729719441e+15,
    4.42733268572569800351e+16, -1.84950800436986690637e+16,
)
_Y0_YQ = (
    1.04128353664259848412e+03, 6.26107330137134956842e+05, 2.68919633393814121987e+08,
    8.64002487103935000337e+10, 2.02979612750105546709e+13, 3.17157752842975028269e+15,
    2.50596256172653059228e+17,
)
_J1_PP = (
    7.62125616208173112003e-04, 7.31397056940917570436e-02, 1.12719608129684925192e+00,
    5.11207951146807644818e+00, 8.42404590141772420927e+00, 5.21451598682361504063e+00,
    1.00000000000000000254e+00,
)
_J1_PQ = (
    5.71323128072548699714e-04, 6.88455908754495404082e-02, 1.10514232634061696926e+00,
    5.07386386128601488557e+00, 8.39985554327604159757e+00, 5.20982848682361821619e+00,
    9.99999999999999997461e-01,
)
_J1_QP = (
    5.10862594750176621635e-02, 4.98213872951233449420e+00, 7.58238284132545283818e+01,
    3.66779609360150777800e+02, 7.10856304998926107277e+02, 5.97489612400613639965e+02,
    2.11688757100572135698e+02, 2.52070205858023719784e+01,
)
_J1_QQ = (
    7.42373277035675149943e+01, 1.05644886038262816351e+03, 4.98641058337653607651e+03,
    9.56231892404756170795e+03, 7.99704160447350683650e+03, 2.82619278517639096600e+03,
    3.36093607810698293419e+02,
)
_J1_RP = (
    -8.99971225705559398224e+08, 4.52228297998194034323e+11, -7.27494245221818276015e+13,
    3.68295732863852883286e+15,
)
_J1_RQ = (
    6.20836478118054335476e+02, 2.56987256757748830383e+05, 8.35146791431949253037e+07,
    2.21511595479792499675e+10, 4.74914122079991414898e+12, 7.84369607876235854894e+14,
    8.95222336184627338078e+16, 5.32278620332680085395e+18,
)
_Y1_YP = (
    1.26320474790178026440e+09, -6.47355876379160291031e+11, 1.14509511541823727583e+14,
    -8.12770255501325109621e+15, 2.02439475713594898196e+17, -7.78877196265950026825e+17,
)
_Y1_YQ = (
    5.94301592346128195359e+02, 2.35564092943068577943e+05, 7.34811944459721705660e+07,
    1.87601316108706159478e+10, 3.88231277496238566008e+12, 6.20557727146953693363e+14,
    6.87141087355300489866e+16, 3.97270608116560655612e+18,
)
_K0_A = (
    1.37446543561352307156e-16, 4.25981614279661018399e-14, 1.03496952576338420167e-11,
    1.90451637722020886025e-09, 2.53479107902614945675e-07, 2.28621210311945178607e-05,
    1.26461541144692592338e-03, 3.59799365153615016266e-02, 3.44289899924628486886e-01,
    -5.35327393233902768720e-01,
)
_K0_B = (
    5.30043377268626276149e-18, -1.64758043015242134646e-17, 5.21039150503902756861e-17,
    -1.67823109680541210385e-16, 5.51205597852431940784e-16, -1.84859337734377901440e-15,
    6.34007647740507060557e-15, -2.22751332699166985548e-14, 8.03289077536357521100e-14,
    -2.98009692317273043925e-13, 1.14034058820847496303e-12, -4.51459788337394416547e-12,
    1.85594911495471785253e-11, -7.95748924447710747776e-11, 3.57739728140030116597e-10,
    -1.69753450938905987466e-09, 8.57403401741422608519e-09, -4.66048989768794782956e-08,
    2.76681363944501510342e-07, -1.83175552271911948767e-06, 1.39498137188764993662e-05,
    -1.28495495816278026384e-04, 1.56988388573005337491e-03, -3.14481013119645005427e-02,
    2.44030308206595545468e+00,
)
_K1_A = (
    -7.02386347938628759343e-18, -2.42744985051936593393e-15, -6.66690169419932900609e-13,
    -1.41148839263352776110e-10, -2.21338763073472585583e-08, -2.43340614156596823496e-06,
    -1.73028895751305206302e-04, -6.97572385963986435018e-03, -1.22611180822657148235e-01,
    -3.53155960776544875667e-01, 1.52530022733894777053e+00,
)
_K1_B = (
    -5.75674448366501715755e-18, 1.79405087314755922667e-17, -5.68946255844285935196e-17,
    1.83809354436663880070e-16, -6.05704724837331885336e-16, 2.03870316562433424052e-15,
    -7.01983709041831346144e-15, 2.47715442448130437068e-14, -8.97670518232499435011e-14,
    3.34841966607842919884e-13, -1.28917396095102890680e-12, 5.13963967348173025100e-12,
    -2.12996783842756842877e-11, 9.21831518760500529508e-11, -4.19035475934189648750e-10,
    2.01504975519703286596e-09, -1.03457624656780970260e-08, 5.74108412545004946722e-08,
    -3.50196060308781257119e-07, 2.40648494783721712015e-06, -1.93619797416608296024e-05,
    1.95215518471351631108e-04, -2.85781685962277938680e-03, 1.03923736576817238437e-01,
    2.72062619048444266945e+00,
)
_AI_AN = (
    3.46538101525629032477e-01, 1.20075952739645805542e+01, 7.62796053615234516538e+01,
    1.68089224934630576269e+02, 1.59756391350164413639e+02, 7.05360906840444183113e+01,
    1.40264691163389668864e+01, 9.99999999999999995305e-01,
)
_AI_AD = (
    5.67594532638770212846e-01, 1.47562562584847203173e+01, 8.45138970141474626562e+01,
    1.77318088145400459522e+02, 1.64234692871529701831e+02, 7.14778400825575695274e+01,
    1.40959135607834029598e+01, 1.00000000000000000470e+00,
)
_AI_AFN = (
    -1.31696323418331795333e-01, -6.26456544431912369773e-01, -6.93158036036933542233e-01,
    -2.79779981545119124951e-01, -4.91900132609500318020e-02, -4.06265923594885404393e-03,
    -1.59276496239262096340e-04, -2.77649108155232920844e-06, -1.67787698489114633780e-08,
)
_AI_AFD = (
    1.33560420706553243746e+01, 3.26825032795224613948e+01, 2.67367040941499554804e+01,
    9.18707402907259625840e+00, 1.47529146771666414581e+00, 1.15687173795188044134e-01,
    4.40291641615211203805e-03, 7.54720348287414296618e-05, 4.51850092970580378464e-07,
)
_AI_AGN = (
    1.97339932091685679179e-02, 3.91103029615688277255e-01, 1.06579897599595591108e+00,
    9.39169229816650230044e-01, 3.51465656105547619242e-01, 6.33888919628925490927e-02,
    5.85804113048388458567e-03, 2.82851600836737019778e-04, 6.98793669997260967291e-06,
    8.11789239554389293311e-08, 3.41551784765923618484e-10,
)
_AI_AGD = (
    9.30892908077441974853e+00, 1.98352928718312140417e+01, 1.55646628932864612953e+01,
    5.47686069422975497931e+00, 9.54293611618961883998e-01, 8.64580826352392193095e-02,
    4.12656523824222607191e-03, 1.01259085116509135510e-04, 1.17166733214413521882e-06,
    4.91834570062930015649e-09,
)
# fmt: on

_HANKEL = {0: (_J0_PP, _J0_PQ, _J0_QP, _J0_QQ), 1: (_J1_PP, _J1_PQ, _J1_QP, _J1_QQ)}
_TWO_OVER_PI = 2 / math.pi
_INV_SQRT_PI = 1 / math.sqrt(math.pi)


def _polevl(x, coeffs):
    """Horner's rule over ``coeffs``, highest degree first."""
    out = jnp.zeros_like(x)
    for c in coeffs:
        out = out * x + c
    return out


def _chbevl(x, coeffs):
    """Clenshaw's sum of a Chebyshev series (Cephes's chbevl), x mapped into [-2, 2]."""
    b0, b1, b2 = jnp.full_like(x, coeffs[0]), jnp.zeros_like(x), jnp.zeros_like(x)
    for c in coeffs[1:]:
        b0, b1, b2 = x * b0 - b1 + c, b0, b1
    return 0.5 * (b0 - b2)


def _branches(x, is_near, near, far):
    """``near(x)`` where ``is_near``, else ``far(x)``; each is fed 1 or 10 where not taken."""
    return jnp.where(is_near, near(jnp.where(is_near, x, 1.0)), far(jnp.where(is_near, 10.0, x)))


def _positive(x, at_zero, fn):
    """``fn`` of x > 0 (NaN passes through), ``at_zero`` at +-0, NaN below zero."""
    y = fn(jnp.where(x <= 0, 1.0, x))
    return jnp.where(x == 0, at_zero, jnp.where(x < 0, jnp.nan, y))


def _hankel(x, order):
    """(J, Y) of ``order`` for x > 5: Hankel's asymptotic P and Q, as rationals in (5/x)^2."""
    pp, pq, qp, qq = _HANKEL[order]
    w = 25 / (x * x) if order == 0 else jnp.square(5 / x)  # PyTorch's own rounding for each
    p = _polevl(w, pp) / _polevl(w, pq)
    q = 5 / x * (_polevl(w, qp) / _polevl(w, qq))
    phase = x - (2 * order + 1) * math.pi / 4
    c, s = jnp.cos(phase), jnp.sin(phase)
    scale = math.sqrt(2 / math.pi) / jnp.sqrt(x)
    return (p * c - q * s) * scale, (p * s + q * c) * scale


def _j_near(x, order):
    """J_0 or J_1 on [0, 5]: a rational in x^2 times the factors of the first two zeros."""
    z = x * x
    if order == 0:
        rational = _polevl(z, _J0_RP) / _polevl(z, _J0_RQ)
        series = (z - 5.78318596294678452118) * (z - 30.4712623436620863991) * rational
        return jnp.where(x < 1e-5, 1 - z / 4, series)
    rational = _polevl(z, _J1_RP) / _polevl(z, _J1_RQ) * x
    return rational * (z - 14.6819706421238932572) * (z - 49.2184563216946036703)


def _y_near(x, order):
    """Y_0 or Y_1 on (0, 5]: a rational in x^2 plus the (2/pi) log(x) J_n(x) term."""
    z = x * x
    if order == 0:
        return _polevl(z, _Y0_YP) / _polevl(z, _Y0_YQ) + _TWO_OVER_PI * jnp.log(x) * _j_near(x, 0)
    log_term = _j_near(x, 1) * jnp.log(x) - 1 / x
    return x * (_polevl(z, _Y1_YP) / _polevl(z, _Y1_YQ)) + _TWO_OVER_PI * log_term


def _bessel_j(x, order):
    ax = jnp.abs(x)
    j = _branches(ax, ax <= 5, lambda t: _j_near(t, order), lambda t: _hankel(t, order)[0])
    return jnp.where(x < 0, -j, j) if order else j


def _bessel_y(x, order):
    def y(t):
        return _branches(t, t <= 5, lambda u: _y_near(u, order), lambda u: _hankel(u, order)[1])

    return _positive(x, -jnp.inf, y)


def _k_near(x, order):
    """K_0 or K_1 on (0, 2]: a Chebyshev series in x^2 plus the log(x/2) I_n(x) term."""
    if order == 0:
        return _chbevl(x * x - 2, _K0_A) - jnp.log(0.5 * x) * jax.scipy.special.i0(x)
    return jnp.log(0.5 * x) * jax.scipy.special.i1(x) + _chbevl(x * x - 2, _K1_A) / x


def _bessel_k(x, order, scaled):
    """K_0 or K_1, times e^x if ``scaled``; beyond 2, e^x K is a Chebyshev series in 8/x."""

    def near(t):
        k = _k_near(t, order)
        return k * jnp.exp(t) if scaled else k

    def far(t):
        scaled_k = _chbevl(8 / t - 2, _K1_B if order else _K0_B) / jnp.sqrt(t)
        return scaled_k if scaled else jnp.exp(-t) * scaled_k

    return _positive(x, jnp.inf, lambda t: _branches(t, t <= 2, near, far))


_BESSEL = {
    aten.special_bessel_j0.default: lambda x: _bessel_j(x, 0),
    aten.special_bessel_j1.default: lambda x: _bessel_j(x, 1),
    aten.special_bessel_y0.default: lambda x: _bessel_y(x, 0),
    aten.special_bessel_y1.default: lambda x: _bessel_y(x, 1),
    aten.special_modified_bessel_k0.default: lambda x: _bessel_k(x, 0, False),
    aten.special_modified_bessel_k1.default: lambda x: _bessel_k(x, 1, False),
    aten.special_scaled_modified_bessel_k0.default: lambda x: _bessel_k(x, 0, True),
    aten.special_scaled_modified_bessel_k1.default: lambda x: _bessel_k(x, 1, True),
}
for _op, _fn in _BESSEL.items():
    register(_op, promote=INT_TO_FLOAT)(_fn)


def _airy_below(x):
    """Ai for x < -2.09: the oscillating asymptotic form, rationals in 1/zeta^2."""
    zeta = -2 * x * jnp.sqrt(-x) / 3
    z = 1 / zeta
    zz = z * z
    f = 1 + zz * _polevl(zz, _AI_AFN) / _polevl(zz, _AI_AFD)
    g = z * _polevl(zz, _AI_AGN) / _polevl(zz, _AI_AGD)
    t = zeta + math.pi / 4
    return _INV_SQRT_PI / jnp.sqrt(jnp.sqrt(-x)) * (jnp.sin(t) * f - jnp.cos(t) * g)


def _airy_above(x):
    """Ai for x >= 2.09: the decaying asymptotic form, a rational in 1/zeta."""
    zeta = 2 * x * jnp.sqrt(x) / 3
    rational = _polevl(1 / zeta, _AI_AN) / _polevl(1 / zeta, _AI_AD)
    # Times exp(-zeta) where PyTorch divides by exp(zeta): that overflows past x = 26 and
    # turns the gradient to NaN, where Ai is already below float32's smallest normal number.
    return _INV_SQRT_PI * rational / (2 * jnp.sqrt(jnp.sqrt(x))) * jnp.exp(-zeta)


def _airy_series(x):
    """Ai for |x| < 2.09: the Maclaurin series, Ai(0) f(x) + Ai'(0) g(x)."""
    # PyTorch sums until a term falls below epsilon: at most 8 terms in float32 on this
    # range. A fixed 10 covers float64 too and keeps the loop static under jit.
    z = x * x * x
    f, g, m, n = 1.0, x, 1.0, x
    for k in range(2, 32, 3):
        m = m * z / k / (k + 1)
        n = n * z / (k + 1) / (k + 2)
        f, g = f + m, g + n
    return 0.355028053887817239260 * f - 0.258819403792806798405 * g


@register(aten.special_airy_ai.default, promote=INT_TO_FLOAT)
def airy_ai(x):
    below, above = x < -2.09, (x >= 2.09) & (x <= 103.892)
    middle = ~below & (x < 2.09)
    ai = _airy_series(jnp.where(middle, x, 0.0))
    ai = jnp.where(above, _airy_above(jnp.where(above, x, 10.0)), ai)
    ai = jnp.where(below, _airy_below(jnp.where(below, x, -10.0)), ai)
    ai = jnp.where(x > 103.892, 0.0, ai)
    return jnp.where(jnp.isfinite(x), ai, jnp.nan)
