"""The paper's protocol: hyperparameter tuning and best-setting testing, writing its CSV files."""
