"""The fp-onnx command line: a thin click layer over the fp_onnx library."""
