"""Building a model bundle: candidate mixes -> proxy reward models -> PPM -> ONNX, plus the routing models."""
