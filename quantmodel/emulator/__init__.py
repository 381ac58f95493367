"""The bit-exact integer emulator of the quantized STDiT (eager block and its compiled program) and the
fake-quantized float model."""
