"""Every Kubernetes and Knative key this adapter reads or writes, in one place.

Knative accepts the kebab-case autoscaling keys and, for compatibility, their older camelCase
spellings; we write the canonical one and read both, canonical first.
"""

from __future__ import annotations

MIN_SCALE = "autoscaling.knative.dev/min-scale"
MIN_SCALE_READ = (MIN_SCALE, "autoscaling.knative.dev/minScale")
MAX_SCALE_READ = ("autoscaling.knative.dev/max-scale", "autoscaling.knative.dev/maxScale")
ACTIVATION_SCALE_READ = ("autoscaling.knative.dev/activation-scale",)

SERVICE_LABEL = "serving.knative.dev/service"  # on Revisions: the Service that owns them
# The installed version, on Knative Serving's system namespace and its Deployments: the first since
# 1.4 (without a leading `v`), the second until 1.3 (with one).
VERSION_LABELS = ("app.kubernetes.io/version", "serving.knative.dev/release")
KNATIVE_NAMESPACE = "knative-serving"  # the default system namespace (SYSTEM_NAMESPACE of its pods)
CONTROLLER_DEPLOYMENT = "controller"  # Knative Serving's controller, in the system namespace

SERVING_GROUP, SERVING_VERSION = "serving.knative.dev", "v1"
AUTOSCALING_GROUP, AUTOSCALING_VERSION = "autoscaling.internal.knative.dev", "v1alpha1"

PREWARM_ENABLED = "prewarm.dev/enabled"
PREWARM_WAKE = "prewarm.dev/wake"

MERGE_PATCH = "application/merge-patch+json"

# From Knative 1.21 the revision reconciler copies autoscaling.knative.dev/* annotations from the
# Revision to its PodAutoscaler; before that, only the PodAutoscaler's own annotation counts.
REVISION_ANNOTATIONS_SINCE = (1, 21)
