"""Making a fine-tuned folder smaller or faster, each a stage that writes a new self-describing folder:
structured pruning (``prune``), low-rank factorization (``factorize``), INT8 quantization (``quantize``),
vocabulary trimming (``trim_vocab``), early exit (``early_exit``) and ONNX export (``export``)."""
