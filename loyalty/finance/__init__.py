"""Finance: what the outstanding points are worth, how they moved, and the revenue they earn."""
