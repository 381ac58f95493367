"""STDiT in PyTorch and its integer twin, one sub-package per concept (each imports only those above it):

- ``model``: the float STDiT (v1.0 and v1.2 blocks), checkpoints, samplers, op traces on the meta device;
- ``quant``: calibration per denoising step, SmoothQuant, the quantized model (``artifact``);
- ``intarith``: fixed-point arithmetic, integer GEMMs and ops, their C loops and a float64 oracle;
- ``emulator``: the bit-exact integer model (eager and compiled) and fake quantization;
- ``eval``: the quality of a recipe against the float model, and numerics verification.
"""
