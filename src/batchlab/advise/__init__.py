"""The advice: which batch size and learning rate, predicted from measurements.

Start at pipeline.py (`advise`, its phases); model.py is the pure model it rests on (candidate
batches, steps and time to target, the throughput stop, the forecast); choice.py picks the point
and its rate, evidence.py times what the speedup rests on, rationale.py says it in words.
"""
