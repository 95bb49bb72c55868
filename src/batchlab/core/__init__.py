"""Infrastructure every layer stands on: devices, ranks, data, precision, the store, the step."""
