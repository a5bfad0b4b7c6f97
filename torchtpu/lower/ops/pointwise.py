"""Elementwise ops. Promotion is declared at registration (see registry.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from torchtpu.lower.dtypes import Promote
from torchtpu.lower.ops._util import aten, is_complex, is_float, is_integral
from torchtpu.lower.registry import register

DEFAULT, INT_TO_FLOAT = Promote.DEFAULT, Promote.INT_TO_FLOAT
ALWAYS_BOOL, BOOL_TO_LONG = Promote.ALWAYS_BOOL, Promote.BOOL_TO_LONG
COMPLEX_TO_FLOAT, NO_OPMATH = Promote.COMPLEX_TO_FLOAT, Promote.NO_OPMATH
BINARY = (0, 1)


def _unary(table: dict, promote: Promote) -> None:
    for op, fn in table.items():
        register(op, promote=promote)(lambda x, _fn=fn: _fn(x))


# --- arithmetic -------------------------------------------------------------


def _times(y, alpha):
    # alpha may be a traced program input (device mode's learning rates), which
    # cannot answer ``alpha == 1``; only a literal 1 skips the multiply.
    return y if isinstance(alpha, (bool, int, float)) and alpha == 1 else y * alpha


@register(aten.add.Tensor, aten.add.Scalar, promote=DEFAULT, promote_args=BINARY)
def add(x, y, *, alpha=1):
    return x + _times(y, alpha)


@register(aten.sub.Tensor, aten.sub.Scalar, promote=DEFAULT, promote_args=BINARY)
def sub(x, y, *, alpha=1):
    return x - _times(y, alpha)


@register(aten.rsub.Tensor, aten.rsub.Scalar, promote=DEFAULT, promote_args=BINARY)
def rsub(x, y, *, alpha=1):
    return y - _times(x, alpha)


@register(aten.mul.Tensor, aten.mul.Scalar, promote=DEFAULT)
def mul(x, y):
    if getattr(x, "dtype", None) == jnp.bool_ and getattr(y, "dtype", None) == jnp.bool_:
        return x & y
    return x * y


@register(aten.div.Tensor, aten.div.Scalar, promote=INT_TO_FLOAT)
def div(x, y):
    return x / y


@register(aten.div.Tensor_mode, aten.div.Scalar_mode, promote=DEFAULT, promote_args=BINARY)
def div_mode(x, y, *, rounding_mode=None):
    if rounding_mode is None:
        return x / y
    if rounding_mode == "floor":
        return jnp.floor_divide(x, y)
    if is_integral(jnp.asarray(x)) and is_integral(jnp.asarray(y)):
        return lax.div(*jnp.broadcast_arrays(x, jnp.asarray(y, jnp.result_type(x))))
    return jnp.trunc(x / y)


@register(aten.floor_divide.default, aten.floor_divide.Scalar, promote=DEFAULT)
def floor_divide(x, y):
    return jnp.floor_divide(x, y)


@register(aten.remainder.Tensor, aten.remainder.Scalar, promote=DEFAULT)
def remainder(x, y):
    return jnp.remainder(x, y)


@register(aten.remainder.Scalar_Tensor, promote=DEFAULT)
def remainder_scalar_tensor(x, y):
    return jnp.remainder(x, y)


@register(aten.fmod.Tensor, aten.fmod.Scalar, promote=DEFAULT)
def fmod(x, y):
    return jnp.fmod(x, y)


@register(aten.pow.Tensor_Tensor, aten.pow.Tensor_Scalar, aten.pow.Scalar, promote=BOOL_TO_LONG)
def pow_(x, y):
    if isinstance(y, (int, float)) and not isinstance(y, bool) and float(y).is_integer():
        if abs(y) <= 4 and not (y < 0 and is_integral(jnp.asarray(x))):
            return lax.integer_pow(x, int(y))
    if is_integral(jnp.asarray(x)) and is_integral(jnp.asarray(y)):
        return _int_pow(jnp.asarray(x), jnp.asarray(y))
    return jnp.power(x, y)


def _int_pow(x, y):
    # Integer powers wrap on overflow, as in PyTorch; a negative exponent gives
    # 0 except for bases 1 and -1, where XLA's result is unspecified.
    out = jnp.power(x, jnp.maximum(y, 0))
    odd = (y % 2) != 0
    special = jnp.where(x == 1, 1, jnp.where(odd, -1, 1)) if x.dtype != jnp.bool_ else x
    negative = jnp.where((x == 1) | (x == -1), special, 0).astype(out.dtype)
    return jnp.where(y < 0, negative, out)


@register(aten.neg.default, promote=DEFAULT)
def neg(x):
    return -x


@register(aten.abs.default, promote=COMPLEX_TO_FLOAT)
def abs_(x):
    return jnp.abs(x)


@register(aten.sign.default, aten.sgn.default, promote=DEFAULT)
def sign(x):
    return x if x.dtype == jnp.bool_ else jnp.sign(x)


@register(aten.reciprocal.default, promote=INT_TO_FLOAT)
def reciprocal(x):
    return 1 / x


# minimum/maximum propagate NaN (lax.min/max do); fmin/fmax ignore it.
for _op, _fn in {
    aten.minimum.default: jnp.minimum,
    aten.maximum.default: jnp.maximum,
    aten.fmin.default: jnp.fmin,
    aten.fmax.default: jnp.fmax,
}.items():
    register(_op, promote=DEFAULT)(lambda x, y, _fn=_fn: _fn(x, y))


@register(aten.clamp.default, aten.clamp.Tensor, promote=DEFAULT)
def clamp(x, min=None, max=None):
    if min is not None:
        x = jnp.maximum(x, min)
    if max is not None:
        x = jnp.minimum(x, max)
    return x


@register(aten.clamp_min.default, aten.clamp_min.Tensor, promote=DEFAULT)
def clamp_min(x, min):
    return jnp.maximum(x, min)


@register(aten.clamp_max.default, aten.clamp_max.Tensor, promote=DEFAULT)
def clamp_max(x, max):
    return jnp.minimum(x, max)


@register(
    aten.where.self,
    aten.where.ScalarSelf,
    aten.where.ScalarOther,
    aten.where.Scalar,
    promote=DEFAULT,
    promote_args=(1, 2),
)
def where(cond, x, y):
    return jnp.where(cond, x, y)


@register(aten.lerp.Scalar, aten.lerp.Tensor, promote=DEFAULT)
def lerp(x, end, weight):
    return x + weight * (end - x)


@register(aten.addcmul.default, promote=DEFAULT)
def addcmul(x, t1, t2, *, value=1):
    return x + value * t1 * t2


@register(aten.addcdiv.default, promote=INT_TO_FLOAT)
def addcdiv(x, t1, t2, *, value=1):
    return x + value * t1 / t2


# --- transcendental and rounding ---------------------------------------------

_unary(
    {
        aten.exp.default: jnp.exp,
        aten.exp2.default: jnp.exp2,
        aten.expm1.default: jnp.expm1,
        aten.log.default: jnp.log,
        aten.log2.default: jnp.log2,
        aten.log10.default: jnp.log10,
        aten.log1p.default: jnp.log1p,
        aten.sqrt.default: jnp.sqrt,
        aten.rsqrt.default: lax.rsqrt,
        aten.sin.default: jnp.sin,
        aten.cos.default: jnp.cos,
        aten.tan.default: jnp.tan,
        aten.asin.default: jnp.arcsin,
        aten.acos.default: jnp.arccos,
        aten.atan.default: jnp.arctan,
        aten.sinh.default: jnp.sinh,
        aten.cosh.default: jnp.cosh,
        aten.tanh.default: jnp.tanh,
        aten.asinh.default: jnp.arcsinh,
        aten.acosh.default: jnp.arccosh,
        aten.atanh.default: jnp.arctanh,
        aten.erf.default: jax.scipy.special.erf,
        aten.erfc.default: jax.scipy.special.erfc,
        aten.erfinv.default: jax.scipy.special.erfinv,
        aten.sigmoid.default: jax.nn.sigmoid,
        aten.lgamma.default: jax.scipy.special.gammaln,
        aten.digamma.default: lambda x: jnp.where(x == 0, -jnp.inf, jax.scipy.special.digamma(x)),
        aten.i0.default: jax.scipy.special.i0,
        aten.sinc.default: jnp.sinc,
    },
    INT_TO_FLOAT,
)


def _round_like(fn):
    return lambda x: x if is_integral(x) else fn(x)


_unary(
    {
        aten.floor.default: _round_like(jnp.floor),
        aten.ceil.default: _round_like(jnp.ceil),
        aten.trunc.default: _round_like(jnp.trunc),
        aten.round.default: _round_like(jnp.round),
        aten.frac.default: lambda x: x - jnp.trunc(x),
        aten.relu.default: lambda x: jnp.maximum(x, jnp.zeros((), x.dtype)),
    },
    DEFAULT,
)


@register(aten.round.decimals, promote=DEFAULT)
def round_decimals(x, *, decimals=0):
    return jnp.round(x, decimals)


@register(aten.atan2.default, promote=INT_TO_FLOAT)
def atan2(x, y):
    return jnp.arctan2(x, y)


@register(aten.hypot.default, promote=DEFAULT)
def hypot(x, y):
    return jnp.hypot(x, y)


@register(aten.copysign.Tensor, aten.copysign.Scalar, promote=INT_TO_FLOAT)
def copysign(x, y):
    return jnp.copysign(x, y)


@register(aten.xlogy.Tensor, aten.xlogy.Scalar_Self, aten.xlogy.Scalar_Other, promote=INT_TO_FLOAT)
def xlogy(x, y):
    return jax.scipy.special.xlogy(x, y)


@register(aten.logit.default, promote=INT_TO_FLOAT)
def logit(x, eps=None):
    if eps is not None:
        x = jnp.clip(x, eps, 1 - eps)
    return jnp.log(x / (1 - x))


@register(aten.nan_to_num.default, promote=DEFAULT)
def nan_to_num(x, nan=None, posinf=None, neginf=None):
    if not is_float(x):
        return x
    return jnp.nan_to_num(x, nan=0.0 if nan is None else nan, posinf=posinf, neginf=neginf)


# --- activations ---------------------------------------------------------------


@register(aten.gelu.default, promote=DEFAULT)
def gelu(x, *, approximate="none"):
    return jax.nn.gelu(x, approximate=approximate == "tanh")


@register(aten.gelu_backward.default, promote=DEFAULT)
def gelu_backward(grad, x, *, approximate="none"):
    _, vjp = jax.vjp(lambda v: jax.nn.gelu(v, approximate=approximate == "tanh"), x)
    return vjp(grad)[0]


@register(aten.silu.default, promote=DEFAULT)
def silu(x):
    return x * jax.nn.sigmoid(x)


@register(aten.hardtanh.default, promote=DEFAULT)
def hardtanh(x, min_val=-1.0, max_val=1.0):
    return jnp.clip(x, min_val, max_val)


@register(aten.leaky_relu.default, promote=DEFAULT)
def leaky_relu(x, negative_slope=0.01):
    return jnp.where(x > 0, x, x * negative_slope)


@register(aten.elu.default, promote=DEFAULT)
def elu(x, alpha=1.0, scale=1.0, input_scale=1.0):
    return jnp.where(x > 0, x * scale, jnp.expm1(x * input_scale) * alpha * scale)


@register(aten.softplus.default, promote=DEFAULT)
def softplus(x, beta=1.0, threshold=20.0):
    bx = x * beta
    return jnp.where(bx > threshold, x, jnp.log1p(jnp.exp(bx)) / beta)


@register(aten.threshold.default, promote=DEFAULT)
def threshold(x, threshold, value):
    return jnp.where(x <= threshold, value, x)


@register(aten.threshold_backward.default, promote=DEFAULT)
def threshold_backward(grad, x, threshold):
    return jnp.where(x <= threshold, jnp.zeros((), grad.dtype), grad)


@register(aten.sigmoid_backward.default, promote=DEFAULT)
def sigmoid_backward(grad, y):
    return grad * y * (1 - y)


@register(aten.tanh_backward.default, promote=DEFAULT)
def tanh_backward(grad, y):
    return grad * (1 - y * y)


# --- comparison and logic ---------------------------------------------------------

_COMPARE = {
    aten.eq: jnp.equal,
    aten.ne: jnp.not_equal,
    aten.lt: jnp.less,
    aten.le: jnp.less_equal,
    aten.gt: jnp.greater,
    aten.ge: jnp.greater_equal,
}
for _packet, _fn in _COMPARE.items():
    register(_packet.Tensor, _packet.Scalar, promote=ALWAYS_BOOL)(lambda x, y, _fn=_fn: _fn(x, y))


def _truth(x):
    return x if getattr(x, "dtype", None) == jnp.bool_ else x != 0


@register(aten.logical_not.default, promote=ALWAYS_BOOL)
def logical_not(x):
    return jnp.logical_not(_truth(x))


for _op, _fn in {
    aten.logical_and.default: jnp.logical_and,
    aten.logical_or.default: jnp.logical_or,
    aten.logical_xor.default: jnp.logical_xor,
}.items():
    register(_op, promote=ALWAYS_BOOL)(lambda x, y, _fn=_fn: _fn(_truth(x), _truth(y)))

for _packet, _fn in {
    aten.bitwise_and: jnp.bitwise_and,
    aten.bitwise_or: jnp.bitwise_or,
    aten.bitwise_xor: jnp.bitwise_xor,
}.items():
    register(_packet.Tensor, _packet.Scalar, promote=DEFAULT)(lambda x, y, _fn=_fn: _fn(x, y))


@register(aten.bitwise_not.default, promote=DEFAULT)
def bitwise_not(x):
    return jnp.logical_not(x) if x.dtype == jnp.bool_ else jnp.invert(x)


@register(aten.bitwise_left_shift.Tensor, aten.bitwise_left_shift.Tensor_Scalar, promote=DEFAULT)
def left_shift(x, y):
    return jnp.left_shift(x, y)


@register(aten.bitwise_right_shift.Tensor, aten.bitwise_right_shift.Tensor_Scalar, promote=DEFAULT)
def right_shift(x, y):
    return jnp.right_shift(x, y)


@register(aten.isnan.default)
def isnan(x):
    return jnp.isnan(x) if is_float(x) or is_complex(x) else jnp.zeros(x.shape, jnp.bool_)


@register(aten.isinf.default)
def isinf(x):
    return jnp.isinf(x) if is_float(x) or is_complex(x) else jnp.zeros(x.shape, jnp.bool_)


@register(aten.isfinite.default)
def isfinite(x):
    return jnp.isfinite(x) if is_float(x) or is_complex(x) else jnp.ones(x.shape, jnp.bool_)


@register(aten.signbit.default)
def signbit(x):
    return jnp.signbit(x)


# --- complex ------------------------------------------------------------------------


@register(aten.real.default)
def real(x):
    return jnp.real(x)


@register(aten.imag.default)
def imag(x):
    return jnp.imag(x)


@register(
    aten.conj_physical.default, aten._conj.default, aten.conj.default, aten._conj_physical.default
)
def conj(x):
    return jnp.conj(x)


@register(aten.angle.default, promote=INT_TO_FLOAT)
def angle(x):
    return jnp.angle(x)


@register(aten.complex.default)
def complex_(real, imag):
    return lax.complex(*jnp.broadcast_arrays(real, imag))


@register(aten.polar.default)
def polar(magnitude, angle):
    magnitude, angle = jnp.broadcast_arrays(magnitude, angle)
    return lax.complex(magnitude * jnp.cos(angle), magnitude * jnp.sin(angle))


@register(aten.gcd.default, promote=DEFAULT)
def gcd(x, y):
    return jnp.gcd(x, y)


@register(aten.lcm.default, promote=DEFAULT)
def lcm(x, y):
    return jnp.lcm(x, y)
