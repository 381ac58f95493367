"""Quantization: per-step calibration statistics, SmoothQuant factors, the quantized model (artifact)."""
