"""Deprecated location: the offline jobs moved.

The job service is :mod:`synth_middleware.offline.jobs`; its HTTP routes are
:mod:`synth_middleware.server.routes.jobs`. Kept so that imports of
``synth_middleware.server.jobs`` keep working (no warning at import: tests may run
with ``-W error``).
"""

from synth_middleware.offline.jobs import JobConfig, JobManager
from synth_middleware.server.routes.jobs import (
    JOB_PREFIXES,
    job_rollout_call,
    jobs_of,
    router,
    shutdown_jobs,
)

__all__ = [
    "JOB_PREFIXES",
    "JobConfig",
    "JobManager",
    "job_rollout_call",
    "jobs_of",
    "router",
    "shutdown_jobs",
]
