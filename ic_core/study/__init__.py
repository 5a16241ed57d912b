"""Studies: the runner, regime comparisons and exports."""
