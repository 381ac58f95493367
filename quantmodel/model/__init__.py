"""The float model: STDiT blocks, checkpoint loading, samplers, op traces (meta device)."""
