"""Elementwise ops: arithmetic with broadcasting and pointwise activations."""

from __future__ import annotations

import math

from ..registry import UnsupportedVariant, VjpContext, register


@register("Identity", "Dropout")
def pass_through(ctx: VjpContext) -> list:
    return [ctx.g] + [None] * (len(ctx.node.input) - 1)


@register("Cast")
def cast(ctx: VjpContext) -> list:
    in_type = ctx.index.info[ctx.x].elem_type
    return [ctx.emit.op("Cast", [ctx.g], to=in_type)]


@register("Neg")
def neg(ctx: VjpContext) -> list:
    return [ctx.emit.op("Neg", [ctx.g])]


@register("Add", "Sum")
def add(ctx: VjpContext) -> list:
    return [ctx.unbroadcast(ctx.g, name) if need else None for name, need in zip(ctx.node.input, ctx.needs)]


@register("Sub")
def sub(ctx: VjpContext) -> list:
    a, b = ctx.node.input
    ga = ctx.unbroadcast(ctx.g, a) if ctx.needs[0] else None
    gb = ctx.unbroadcast(ctx.emit.op("Neg", [ctx.g]), b) if ctx.needs[1] else None
    return [ga, gb]


@register("Mul")
def mul(ctx: VjpContext) -> list:
    a, b = ctx.node.input
    ga = ctx.unbroadcast(ctx.emit.op("Mul", [ctx.g, b]), a) if ctx.needs[0] else None
    gb = ctx.unbroadcast(ctx.emit.op("Mul", [ctx.g, a]), b) if ctx.needs[1] else None
    return [ga, gb]


@register("Div")
def div(ctx: VjpContext) -> list:
    a, b = ctx.node.input
    e = ctx.emit
    ga = ctx.unbroadcast(e.op("Div", [ctx.g, b]), a) if ctx.needs[0] else None
    gb = None
    if ctx.needs[1]:  # d(a/b)/db = -y/b
        gb = ctx.unbroadcast(e.op("Neg", [e.op("Div", [e.op("Mul", [ctx.g, ctx.y]), b])]), b)
    return [ga, gb]


@register("Relu")
def relu(ctx: VjpContext) -> list:
    # Mask from the output keeps Conv+Relu fusable by the runtime (the pre-activation is not read).
    positive = ctx.emit.op("Greater", [ctx.y, ctx.scalar(0.0)])
    return [ctx.emit.mask_where(positive, ctx.g, ctx.dtype)]


@register("LeakyRelu")
def leaky_relu(ctx: VjpContext) -> list:
    alpha = ctx.attr("alpha", 0.01)
    e = ctx.emit
    positive = e.op("Greater", [ctx.x, ctx.scalar(0.0)])
    return [e.op("Where", [positive, ctx.g, e.op("Mul", [ctx.g, ctx.scalar(alpha)])])]


@register("PRelu")
def prelu(ctx: VjpContext) -> list:
    x, slope = ctx.node.input
    if ctx.needs[1]:
        raise UnsupportedVariant("its slope depends on the image; only constant slopes are supported")
    e = ctx.emit
    positive = e.op("Greater", [x, ctx.scalar(0.0)])
    return [e.op("Where", [positive, ctx.g, e.op("Mul", [ctx.g, slope])]), None]


@register("Clip")
def clip(ctx: VjpContext) -> list:
    """Gradient passes where min < x < max (torch's hardtanh/relu6 convention), read from the output."""
    e = ctx.emit
    if ctx.opset < 11:
        lo, hi = ctx.attr("min"), ctx.attr("max")
        lo = ctx.scalar(lo) if lo is not None else None
        hi = ctx.scalar(hi) if hi is not None else None
    else:
        if any(ctx.needs[1:]):
            raise UnsupportedVariant("its min/max depend on the image; only constant bounds are supported")
        lo, hi = ctx.input(1) or None, ctx.input(2) or None
    conds = []
    if lo is not None:
        conds.append(e.op("Greater", [ctx.y, lo]))
    if hi is not None:
        conds.append(e.op("Less", [ctx.y, hi]))
    if not conds:
        return [ctx.g] + [None] * (len(ctx.node.input) - 1)
    cond = conds[0] if len(conds) == 1 else e.op("And", conds)
    return [e.mask_where(cond, ctx.g, ctx.dtype)] + [None] * (len(ctx.node.input) - 1)


@register("Sigmoid")
def sigmoid(ctx: VjpContext) -> list:
    return [ctx.emit.op("Mul", [ctx.g, sigmoid_slope(ctx.emit, ctx.x, ctx.scalar(1.0))])]


def sigmoid_slope(emit, x: str, one: str) -> str:
    """sigmoid'(x) = y * (1 - y) as a / (1 + a)^2 with a = exp(-|x|), which keeps its digits in both tails:
    1 - y has no correct float32 digit once y is within 1e-7 of 1, and onnxruntime's float32 Sigmoid is
    accurate to about 1e-8 in absolute terms only (sigmoid(-16.1) = 1e-7 came out 19 % off)."""
    a = emit.op("Exp", [emit.op("Neg", [emit.op("Abs", [x])])])
    one_plus = emit.op("Add", [one, a])
    return emit.op("Div", [a, emit.op("Mul", [one_plus, one_plus])])


@register("Tanh")
def tanh(ctx: VjpContext) -> list:
    e = ctx.emit
    one_minus = e.op("Sub", [ctx.scalar(1.0), e.op("Mul", [ctx.y, ctx.y])])
    return [e.op("Mul", [ctx.g, one_minus])]


@register("Erf")
def erf(ctx: VjpContext) -> list:
    e = ctx.emit
    gauss = e.op("Exp", [e.op("Neg", [e.op("Mul", [ctx.x, ctx.x])])])
    return [e.op("Mul", [ctx.g, e.op("Mul", [gauss, ctx.scalar(2.0 / math.sqrt(math.pi))])])]


@register("HardSigmoid")
def hard_sigmoid(ctx: VjpContext) -> list:
    """y = clip(alpha*x + beta, 0, 1); slope alpha strictly inside the linear part."""
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    e = ctx.emit
    t = e.op("Add", [e.op("Mul", [ctx.x, ctx.scalar(alpha)]), ctx.scalar(beta)])
    inside = e.op("And", [e.op("Greater", [t, ctx.scalar(0.0)]), e.op("Less", [t, ctx.scalar(1.0)])])
    return [e.mask_where(inside, e.op("Mul", [ctx.g, ctx.scalar(alpha)]), ctx.dtype)]


@register("HardSwish")
def hard_swish(ctx: VjpContext) -> list:
    """y = x*relu6(x+3)/6: dy/dx = 0 for x < -3, x/3 + 1/2 for -3 <= x <= 3, 1 above (torch's convention)."""
    e = ctx.emit
    middle = e.op("Add", [e.op("Mul", [ctx.x, ctx.scalar(1.0 / 3.0)]), ctx.scalar(0.5)])
    upper = e.op("Where", [e.op("Greater", [ctx.x, ctx.scalar(3.0)]), ctx.scalar(1.0), middle])
    slope = e.op("Where", [e.op("Less", [ctx.x, ctx.scalar(-3.0)]), ctx.scalar(0.0), upper])
    return [e.op("Mul", [ctx.g, slope])]


@register("Abs")
def abs_(ctx: VjpContext) -> list:
    return [ctx.emit.op("Mul", [ctx.g, ctx.emit.op("Sign", [ctx.x])])]


@register("Exp")
def exp(ctx: VjpContext) -> list:
    return [ctx.emit.op("Mul", [ctx.g, ctx.y])]


@register("Log")
def log_(ctx: VjpContext) -> list:
    return [ctx.emit.op("Div", [ctx.g, ctx.x])]


@register("Sqrt")
def sqrt(ctx: VjpContext) -> list:
    """dy/dx = 1 / (2 y)."""
    e = ctx.emit
    return [e.op("Div", [ctx.g, e.op("Mul", [ctx.y, ctx.scalar(2.0)])])]


@register("Pow")
def pow_(ctx: VjpContext) -> list:
    """x ** p with a constant exponent p: dy/dx = p x ** (p - 1)."""
    if ctx.needs[1]:
        raise UnsupportedVariant("its exponent depends on the image; only constant exponents are supported")
    e = ctx.emit
    exponent = e.op("Cast", [ctx.node.input[1]], to=ctx.index.info[ctx.x].elem_type)
    slope = e.op("Mul", [exponent, e.op("Pow", [ctx.x, e.op("Sub", [exponent, ctx.scalar(1.0)])])])
    return [ctx.unbroadcast(e.op("Mul", [ctx.g, slope]), ctx.x), None]


@register("Softplus")
def softplus(ctx: VjpContext) -> list:
    e = ctx.emit
    return [e.op("Mul", [ctx.g, e.op("Sigmoid", [ctx.x])])]


@register("Elu", "Selu")
def elu(ctx: VjpContext) -> list:
    """Elu: y = x (x > 0), alpha (e^x - 1) else; Selu: the same times gamma (alpha, gamma per op)."""
    selu = ctx.node.op_type == "Selu"
    alpha = ctx.attr("alpha", 1.6732632423543772 if selu else 1.0)
    gamma = ctx.attr("gamma", 1.0507009873554805) if selu else 1.0
    e = ctx.emit
    below = e.op("Mul", [e.op("Exp", [ctx.x]), ctx.scalar(alpha * gamma)])
    slope = e.op("Where", [e.op("Greater", [ctx.x, ctx.scalar(0.0)]), ctx.scalar(gamma), below])
    return [e.op("Mul", [ctx.g, slope])]


@register("Mish")
def mish(ctx: VjpContext) -> list:
    """y = x tanh(softplus(x)): dy/dx = tanh(sp) + x sigmoid(x) (1 - tanh(sp)^2)."""
    e = ctx.emit
    t = e.op("Tanh", [e.op("Softplus", [ctx.x])])
    one_minus = e.op("Sub", [ctx.scalar(1.0), e.op("Mul", [t, t])])
    slope = e.op("Add", [t, e.op("Mul", [e.op("Mul", [ctx.x, e.op("Sigmoid", [ctx.x])]), one_minus])])
    return [e.op("Mul", [ctx.g, slope])]


@register("Gelu")
def gelu(ctx: VjpContext) -> list:
    """Exact (erf) form: dy/dx = Phi(x) + x phi(x). ``approximate='tanh'``: y = x (1 + t) / 2 with
    t = tanh(c (x + 0.044715 x^3)), c = sqrt(2 / pi):
    dy/dx = (1 + t) / 2 + x (1 - t^2) c (1 + 3 * 0.044715 x^2) / 2."""
    e = ctx.emit
    form = ctx.attr("approximate", "none")
    if form == "tanh":
        x2 = e.op("Mul", [ctx.x, ctx.x])
        inner = e.op("Mul", [e.op("Mul", [ctx.x, e.op("Add", [e.op("Mul", [x2, ctx.scalar(0.044715)]),
                                                               ctx.scalar(1.0)])]),
                             ctx.scalar(math.sqrt(2 / math.pi))])
        t = e.op("Tanh", [inner])
        d_inner = e.op("Mul", [e.op("Add", [e.op("Mul", [x2, ctx.scalar(3 * 0.044715)]), ctx.scalar(1.0)]),
                               ctx.scalar(math.sqrt(2 / math.pi))])
        d_tanh = e.op("Mul", [e.op("Sub", [ctx.scalar(1.0), e.op("Mul", [t, t])]), d_inner])
        slope = e.op("Mul", [e.op("Add", [e.op("Add", [t, ctx.scalar(1.0)]), e.op("Mul", [ctx.x, d_tanh])]),
                             ctx.scalar(0.5)])
        return [e.op("Mul", [ctx.g, slope])]
    if form != "none":
        raise UnsupportedVariant(f"approximate={form!r} is unknown")
    cdf = e.op("Mul", [e.op("Add", [e.op("Erf", [e.op("Mul", [ctx.x, ctx.scalar(1 / math.sqrt(2.0))])]),
                                    ctx.scalar(1.0)]), ctx.scalar(0.5)])
    pdf = e.op("Mul", [e.op("Exp", [e.op("Mul", [e.op("Mul", [ctx.x, ctx.x]), ctx.scalar(-0.5)])]),
                       ctx.scalar(1 / math.sqrt(2 * math.pi))])
    return [e.op("Mul", [ctx.g, e.op("Add", [cdf, e.op("Mul", [ctx.x, pdf])])])]


@register("Celu")
def celu(ctx: VjpContext) -> list:
    """y = max(0, x) + min(0, alpha (e^(x / alpha) - 1)): dy/dx = 1 for x > 0, e^(x / alpha) else."""
    alpha = ctx.attr("alpha", 1.0)
    e = ctx.emit
    below = e.op("Exp", [e.op("Mul", [ctx.x, ctx.scalar(1.0 / alpha)])])
    slope = e.op("Where", [e.op("Greater", [ctx.x, ctx.scalar(0.0)]), ctx.scalar(1.0), below])
    return [e.op("Mul", [ctx.g, slope])]


@register("Max", "Min")
def max_min(ctx: VjpContext) -> list:
    """The gradient goes to the operand that was chosen (for ties, to every operand that equals the
    output), each summed back to its own shape."""
    e = ctx.emit
    out = []
    for name, need in zip(ctx.node.input, ctx.needs):
        if not need:
            out.append(None)
            continue
        chosen = e.op("Equal", [e.op("Expand", [name, e.op("Shape", [ctx.y])]), ctx.y])
        out.append(ctx.unbroadcast(e.mask_where(chosen, ctx.g, ctx.dtype), name))
    return out


@register("Reciprocal")
def reciprocal(ctx: VjpContext) -> list:
    """d(1/x)/dx = -1/x² = -y²."""
    e = ctx.emit
    return [e.op("Neg", [e.op("Mul", [ctx.g, e.op("Mul", [ctx.y, ctx.y])])])]


@register("ThresholdedRelu")
def thresholded_relu(ctx: VjpContext) -> list:
    """y = x where x > alpha (default 1), else 0."""
    above = ctx.emit.op("Greater", [ctx.x, ctx.scalar(ctx.attr("alpha", 1.0))])
    return [ctx.emit.mask_where(above, ctx.g, ctx.dtype)]


@register("Shrink")
def shrink(ctx: VjpContext) -> list:
    """y = x ∓ bias outside [-lambd, lambd] (default 0.5), else 0: slope 1 outside, 0 inside."""
    e, lambd = ctx.emit, ctx.attr("lambd", 0.5)
    below, above = e.op("Less", [ctx.x, ctx.scalar(-lambd)]), e.op("Greater", [ctx.x, ctx.scalar(lambd)])
    outside = e.op("Or", [below, above])
    return [e.mask_where(outside, ctx.g, ctx.dtype)]


@register("Softsign")
def softsign(ctx: VjpContext) -> list:
    """d(x / (1 + |x|))/dx = 1 / (1 + |x|)²."""
    e = ctx.emit
    denominator = e.op("Add", [ctx.scalar(1.0), e.op("Abs", [ctx.x])])
    return [e.op("Div", [ctx.g, e.op("Mul", [denominator, denominator])])]
