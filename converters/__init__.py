"""ONNX <-> PyTorch conversion for fine-tuning, and weight write-back into the vendor graph."""
