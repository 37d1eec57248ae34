"""Making a fine-tuned folder smaller or faster, each a stage that writes a new self-describing folder:
structured pruning (``prune``), INT8 quantization (``quantize``) and ONNX export (``export``)."""
