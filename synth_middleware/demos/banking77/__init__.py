"""Banking77 online: the task, its container, an offline stand-in model and the demo.

* :mod:`~synth_middleware.demos.banking77.data`: locate, download (SHA-256 verified)
  and parse the dataset;
* :mod:`~synth_middleware.demos.banking77.task`: the task and its container app;
* :mod:`~synth_middleware.demos.banking77.standin`: the offline stand-in model
  (word-embedding nearest label, **not an LLM**; re-exported from
  :mod:`synth_middleware.demos.standin`);
* :mod:`~synth_middleware.demos.banking77.demo`: ``synth-middleware demo banking77``
  (also ``python -m synth_middleware.demos.banking77``).
"""
