"""Forecasts learned from each target's own arrival history: features, the arrival model and the
hybrid-histogram fallback. Pure (arrays in, arrays out): imports numpy, scikit-learn and SciPy, no
I/O library and nothing of ours but `prewarm.core`.
"""
