"""The small trained STDiT: procedural shape clips and their captions, the shipped weights, training,
video metrics and the quantization study. A client of ``quantmodel``."""
