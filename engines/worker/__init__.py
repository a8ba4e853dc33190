"""Engines in supervised worker processes.

The box's API process never loads a native inference library. Each loaded model runs in
a worker process (``python -m engines.worker``) that holds llama.cpp or ONNX Runtime, the
model and its scheduler; requests go in and events come out over a socket pair.

- ``spec``: what a worker builds (plain data, picklable).
- ``serve``: the worker's side (runs in the child).
- ``process``: one worker process seen from the box: spawn, calls, events, death.
- ``supervisor``: picks a trusted configuration (self-test, fallback), restarts with
  back-off, reports restarts.
- ``proxies``: ``LLMEngine`` and ``VisionEngine`` implementations over a supervisor, so
  the rest of the box sees the same contracts as in-process engines.
"""
