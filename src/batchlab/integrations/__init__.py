"""batchlab inside the trainers people already run: `lightning` and `transformers` callbacks that
log the gradient noise scale as training goes. Each imports its trainer only when used: install
`batchlab[lightning]` or `batchlab[hf]`."""
