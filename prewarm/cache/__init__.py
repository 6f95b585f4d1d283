"""Semi-warm starts: runtime-keyed compile caches on a shared volume, the `exec` wrapper that points
model servers at them, and the manifest injector. Runs in pods: imports the standard library (and
ruamel.yaml to inject), nothing else of ours.
"""
