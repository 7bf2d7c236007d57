"""The exception types for expected failures."""


class SaraiError(Exception):
    """An expected failure. The message names the file or value at fault and what to do about it;
    modules turn it into fail_json(msg=...) and the CLI into {"failed": true, "msg": ...}."""


class StreamingUnsupported(Exception):
    """The streaming engine does not mirror something in this model; the message says what. The
    caller falls back to the onnxruntime engine, or turns it into a SaraiError when streaming was asked."""
