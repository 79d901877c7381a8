"""Kubernetes manifests for distcb jobs: `distcb k8s render` (see docs/kubernetes.md)."""
