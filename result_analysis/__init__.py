"""Tables and figures of the paper from the best-setting result files (SPEC section 8)."""
