"""One training run: the loop, its evaluation schedule, checkpoints, and runs recorded in the store."""
