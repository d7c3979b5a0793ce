"""The offline side: an optimizer evaluates prompts by driving a task container.

* :mod:`synth_middleware.offline.container`: the task-app contract (``/health``,
  ``/task_info``, ``/rollout``), its clients and in-process runners;
* :mod:`synth_middleware.offline.jobs`: the offline job service (validate the
  container, evaluate candidates through the proxy, propose, finalize), which
  ``synth-middleware serve`` exposes under ``/api/v1/offline/jobs``;
* :mod:`synth_middleware.offline.sdk`: the SDK for the jobs and sessions of the
  hosted API (and of ``synth-middleware serve``).

It stands on the engine and the wire contract; the server imports it, never the
other way round. Importing this package imports none of them.
"""
