"""STDiT in PyTorch, checkpoints, samplers, op traces, calibration, quantization and the integer emulator."""
