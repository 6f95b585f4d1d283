"""KEDA adapter: ScaledObject examples and the scalerMetadata side of the target schema."""
