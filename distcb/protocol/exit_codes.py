"""The exit codes of distcb's processes, which a failure policy can act on.

Kubernetes (Job ``podFailurePolicy``, JobSet ``failurePolicy``), Kubeflow and
torchrun-style launchers read a process's exit code; distcb's workers, its
coordinator and its launcher all end with one of these.
"""

FINISHED = 0
"""The job ended normally, a coordinated early stop included: nothing to retry."""

FAILED = 1
"""A real failure (a bug, a raising callback, a failed worker): retrying will not help."""

USAGE = 2
"""A bad command line or argument (argparse's convention): permanent."""

PREEMPTED = 143
"""Stopped by SIGTERM (a deleted pod, a reclaimed spot node) after a graceful stop and a
backup: "retry me". 128 + 15, what a process killed by SIGTERM reports, so that
orchestrators treat both alike (Kubeflow's ExitCode policy retries 128-255)."""

RETRYABLE = frozenset({PREEMPTED, 137})
"""Codes a restart can cure: a graceful preemption, or a SIGKILL (OOM killer, a node lost)."""
