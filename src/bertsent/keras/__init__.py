"""Keras 3 / KerasHub on TensorFlow: weight conversion to and from the Hugging Face BERT (``model``) and
the TF SavedModel / ``.keras`` exports (``export``). TensorFlow is imported only when used."""
