"""Integer arithmetic: fixed-point requantization, int8 GEMMs, integer non-linear ops, their compiled C
loops and the float64 reference they are checked against."""
