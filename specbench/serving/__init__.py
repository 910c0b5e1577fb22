"""Drafts served by a real engine: vLLM's speculative decoding in its own venv (issue 20).

:mod:`specbench.serving.vllm_serve` is a standalone script run by ``.venv-serve``'s Python
(vLLM pins another transformers than the project's venv): it imports only vLLM and the
standard library, reads one JSON request and writes one JSON answer.
:mod:`specbench.serving.client` builds the request from a run's artifacts, runs the script
in a subprocess and turns its per-prompt counters into served τ.
"""
