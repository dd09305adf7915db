"""What every package shares without torch: atomic file writes, number checks and the result-file schema."""
