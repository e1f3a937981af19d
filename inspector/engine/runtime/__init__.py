"""What runs the graphs: onnxruntime sessions and providers (session, the only module that imports
onnxruntime), the exported model with its contract and sampler graph (model), the weights file sessions
share (weights), the chunk size a memory budget allows (memory), and images into tensors (preprocess)."""
