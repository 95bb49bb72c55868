"""Measurements of a workload on this device, one module each: memory (its pure search in
memory_search.py, each trial in a child process: memory_trial.py, trials.py), strategies,
throughput, noise, the learning-rate search (lr_search.py), and the critical batch by branched
training (critical_batch.py, branches.py)."""
