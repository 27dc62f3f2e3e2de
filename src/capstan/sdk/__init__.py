"""The client layer of tracking: the fluent SDK (`fluent`: ``capstan.start_run``, ``log_*``), `capstan.Client`,
model logging and loading (`fluent_models`), the `TrackingBackend` transport port with its local (the stores of the
composition root) and HTTP (``/api/v1``) adapters, and the background metric writer.

It sits above `capstan.services`; the tracking core it speaks (`capstan.tracking`: records, ports, the search
grammar) sits below the store.
"""
