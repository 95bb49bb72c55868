"""One training run: its options (`config`), the loop, how it is judged (`evaluation`), what it
returns (`result`), checkpoints, and runs recorded in the store (`record`)."""
