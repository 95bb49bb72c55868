"""Sweeps and studies: the folklore of batch sizes tested on your model. run.py dispatches by name;
arms.py is what the studies share; one module per study; sweep.py trains to the target across batch
sizes and fits the trade-off."""
