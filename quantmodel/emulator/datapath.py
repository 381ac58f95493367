"""Widths of the integer-only datapath that the eager block (``integer.py``) and its compiled form
(``program.py``) share."""

RES_BITS = 24  # integer-only residual stream codes (int32 storage)
RES_HEADROOM = 2.0  # the residual's static scale covers this multiple of its calibrated abs-max
PARAM_BITS = 16  # per-step modulation / gate parameters in int mode
