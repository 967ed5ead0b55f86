"""What runs on the queue: the factorial job, its routing, its events and the worker.

Nothing here imports gmpy2 at package import time, so the web process can
enqueue by dotted path without loading the worker's numeric code.
"""
