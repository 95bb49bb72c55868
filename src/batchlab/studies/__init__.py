"""Sweeps and studies: the folklore of batch sizes tested on your model."""
