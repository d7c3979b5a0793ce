"""Optimize a classification prompt on any labelled dataset: ``synth-middleware demo classify``.

A CSV or JSONL file of ``text,label`` rows for training and one for testing is
all it takes:

* :mod:`~synth_middleware.demos.classify.data`: read and check the files
  (:func:`~synth_middleware.demos.classify.data.load_labelled`);
* :mod:`~synth_middleware.demos.classify.task`: the task (a generic baseline
  prompt listing the labels, a forced tool call, reward 1 for the expected
  label) and its container;
* :mod:`~synth_middleware.demos.classify.demo`: the online demo (rollouts,
  proposals, the named best, a held-out comparison with its paired 95% CI);
* :mod:`~synth_middleware.demos.classify.report`: intervals, tables, the plot.

The Banking77 demo is an instance of it (Banking77's verified files and prompt).
"""
