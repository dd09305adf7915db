"""The paper's Table 2, ablation and confidence tables, Figures 4 and 6, from best-setting result files."""
