"""VJP builders, one module per op family; importing this package registers them all."""

from . import elementwise, linear, normalization, pooling, quantize, reduce, resize, shape, softmax  # noqa: F401
