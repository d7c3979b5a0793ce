"""Runnable demos: tasks, containers and offline stand-ins that show the optimizer at work.

``synth-middleware demo classify --train F --test F`` optimizes a classification
prompt on any labelled dataset (see :mod:`synth_middleware.demos.classify`);
``synth-middleware demo banking77`` is that demo on Banking77 (see
:mod:`synth_middleware.demos.banking77`).
"""
