"""Serving a merged checkpoint behind an OpenAI-compatible API.

* :mod:`~gemma_ocr.serving.process`: the server as a child process (embedded or vLLM), started, waited for, stopped,
  dying with its parent;
* :mod:`~gemma_ocr.serving.app`: the embedded server's app (FastAPI/Starlette, the processor and ``generate``);
* :mod:`~gemma_ocr.serving.batching`: concurrent requests generated as one batch (the inference thread);
* :mod:`~gemma_ocr.serving.generation`: one batch's ``generate`` call, each request its own answer;
* :mod:`~gemma_ocr.serving.indexed_masks`: Gemma 3's attention masks built without ``torch.vmap``;
* :mod:`~gemma_ocr.serving.flags`: the embedded server's own flags, checked up front;
* :mod:`~gemma_ocr.serving.openai_api`: the chat-completions request, checked in one place, and the answers' layout;
* :mod:`~gemma_ocr.serving.media`: which image URLs a request may name (data URLs; local files and hosts by flag).

``python -m gemma_ocr.serving MODEL_DIR ...`` runs the embedded server in the foreground. Importing this package
loads neither torch nor transformers.
"""
