"""Choosing a site for a job: which sites can run it, which should, and why.

``config`` (the user's and admin's preferences, GPU equivalence classes), ``feasible`` (pure:
can this site run this request at all), ``live`` (pure: free GPUs and queued demand of one
partition from a probe reading), ``rank`` (pure: order the candidates, a reason for every
row), ``state`` (the probes, their timeouts and the cache shared between CLI invocations).
"""
