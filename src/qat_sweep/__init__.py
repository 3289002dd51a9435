"""qat-sweep: scaling laws for quantization-aware training."""

__version__ = "0.1.0"
