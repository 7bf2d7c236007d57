"""The one exception type for expected failures."""


class SaraiError(Exception):
    """An expected failure. The message names the file or value at fault and what to do about it;
    modules turn it into fail_json(msg=...) and the CLI into {"failed": true, "msg": ...}."""
