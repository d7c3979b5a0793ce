"""Runnable demos: tasks, containers and offline stand-ins that show the optimizer at work.

``synth-middleware demo banking77`` (see :mod:`synth_middleware.demos.banking77`).
"""
