"""SISE Inspector engine: runs SISE on models exported by ``onnx_tools`` with onnxruntime.

Not implemented yet (see the engine issue); this package holds the runtime so that its imports stay
free of torch and of ``onnx_tools`` internals.
"""
