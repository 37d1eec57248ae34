"""Fine-tuning: the PyTorch loop (``loop``), the Keras ``model.fit`` path (``keras``) and knowledge
distillation as a small variation of the same loop (``distill``)."""
