"""One error root for every step, with a `retriable` flag (as aiokafka's KafkaError does).

Adapters translate driver errors into these at a single boundary with `raise ... from e`;
the runtime retries retriable errors with backoff and turns the rest into `<Step>Failed`.
"""


class StepError(Exception):
    retriable = False


class PermanentError(StepError):
    """Retrying cannot help: bad input, a hash mismatch, a violated constraint."""


class TransientError(StepError):
    """A store or the broker is unreachable or timed out: retry with backoff."""

    retriable = True
