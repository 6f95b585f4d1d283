"""The running service: intent listener, store (memory or Redis), decider, live forecaster,
actuators, clocks and telemetry, built by `composition`. Does the I/O; may import everything but
the CLI.
"""
