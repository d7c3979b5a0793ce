"""The offline stand-in model (**not an LLM**), generic over label sets.

* :mod:`~synth_middleware.demos.standin.server`: the OpenAI-compatible server
  (:class:`StandInModel`, :func:`create_standin_app`, :func:`standin_completion`);
* :mod:`~synth_middleware.demos.standin.reading`: the fixed rule by which it
  reads a prompt (which text it attributes to which label);
* :mod:`~synth_middleware.demos.standin.reflect`: the reflective stand-in
  proposer (GEPA's reflection without an LLM);
* :mod:`~synth_middleware.demos.standin.embedding`: the pretrained encoder
  (wordllama, offline);
* :mod:`~synth_middleware.demos.standin.parsing`: queries, labels and
  labelled examples in chat text.

Usage::

    with StandInModel(labels) as model:
        client = openai.OpenAI(base_url=model.url, api_key="none")
"""

from synth_middleware.demos.standin.server import (
    FINGERPRINT,
    MODEL_NAME,
    STANDIN_NOTE,
    StandInModel,
    create_standin_app,
    standin_completion,
)

__all__ = [
    "FINGERPRINT",
    "MODEL_NAME",
    "STANDIN_NOTE",
    "StandInModel",
    "create_standin_app",
    "standin_completion",
]
