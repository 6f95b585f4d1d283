"""Replays of request traces: trace readers, the discrete-event autoscaler simulation, the policy
evaluator and its report. Reads files, no network or event loop; imports the core and forecasts.
"""
