"""Measurements of a workload on this device: memory, throughput, gradient noise."""
