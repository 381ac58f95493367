"""Quality of a quantization recipe against the float model, and numerics verification."""
