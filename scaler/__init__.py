"""KEDA external scaler: serves decided floors over gRPC (`external` and `external-push`)."""
