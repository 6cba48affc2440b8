"""The pipeline's entry points, one module a step: ``python -m pipelines.steps.<step>``
(what ``ray job submit`` runs) and ``dcgan <step>``.

A step parses its arguments, runs the preflight checks, and calls the library below
it (``pipelines/``); it never imports another step (tests/test_layout.py checks).
"""
