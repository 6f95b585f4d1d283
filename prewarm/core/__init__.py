"""The pure core: the target schema, the floor policy, cron windows and the session ledger. No I/O,
no clock, no environment: time is a parameter. Imports the standard library, PyYAML and croniter.
"""
