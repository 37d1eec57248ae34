"""Every exception bertsent raises on purpose, in one module.

Anything raised as a :class:`BertsentError` is a problem with the user's input or environment, not a
bug: the CLI prints its message on one line and exits with code 2 (``-v`` adds the traceback). Any other
exception is a bug and keeps its traceback.
"""


class BertsentError(Exception):
    """Base class for errors caused by input the user can fix."""


class SettingsError(BertsentError, ValueError):
    """A setting out of range or of the wrong kind; a ValueError too, naming the field."""


class DataError(BertsentError):
    """A data source cannot be read or trusted (missing, malformed, unknown labels, ...)."""


class ModelError(BertsentError):
    """A model cannot be found or loaded (bad path, offline hub name, unsafe weights, ...)."""


class ExportError(BertsentError):
    """A model folder cannot be exported to ONNX."""


class ExportParityError(ExportError):
    """A converted model's logits (ONNX Runtime, Keras, TensorFlow) differ from PyTorch's beyond the tolerance.

    Raised by the one parity check, ``bertsent.modeling.parity.parity_check``.
    """


class PruneError(BertsentError):
    """A pruning request that cannot be carried out on this model (unknown layer, too many heads, ...)."""


class PlanError(BertsentError):
    """A recipe's time budget that cannot hold it on this machine (its scoring alone would take most of it)."""


class EarlyExitError(BertsentError):
    """An early-exit request that cannot be carried out (no labelled reviews, unsupported model, ...)."""


class QuantizeError(BertsentError):
    """Quantization cannot run with these inputs."""


class QuantizeSettingsError(QuantizeError, SettingsError):
    """A bad setting: a ValueError naming the field, and a BertsentError so the CLI prints one line."""


class QuantizationCollapseError(QuantizeError):
    """The quantized model predicts (almost) a single class where the fp32 model does not."""


KerasParityError = ExportParityError
"""The name the Keras conversion check used to raise: the same error as every other parity failure."""


class ServeError(BertsentError):
    """The server cannot start or cannot take a request (port in use, worker stopped, ...)."""


class InferenceError(ServeError):
    """The model failed on a request's texts (after the batch was re-run split by request): that request gets a 500."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none (for one-line errors)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
