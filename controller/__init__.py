"""The central control plane: fleet telemetry, drift detection, autoscaling through Kubernetes."""
