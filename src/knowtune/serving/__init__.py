"""Generation through OpenAI-compatible servers (vLLM, llama.cpp's ``llama-server``, ...).

* :mod:`knowtune.serving.config`: the ``--backend openai`` settings every generating stage shares;
* :mod:`knowtune.serving.client`: the async completions client (bounded concurrency, timeouts,
  retries with backoff and jitter, requests spread over replicas);
* :mod:`knowtune.serving.llama`: building, feeding (GGUF) and starting llama.cpp's ``llama-server``.
"""
