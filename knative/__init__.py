"""Knative Serving adapter: applies decided floors as revision min-scale."""
