"""Statistics on plain arrays: AUROC estimates, gating, geometry, entropies. Imports nothing above it."""
