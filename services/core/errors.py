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


# Driver exceptions (by class name: the drivers are not imported here) that mean a store or the
# broker cannot be reached right now: retried by the runtime, "is the stack up?" in the CLI.
UNREACHABLE = frozenset({
    "OperationalError", "InterfaceError", "ServiceUnavailable", "SessionExpired", "MilvusUnavailableException",
    "KafkaConnectionError",
    # botocore: the object store restarting or out of reach
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
})


def unreachable(exc: BaseException) -> bool:
    """A driver error of an UNREACHABLE kind, subclasses included (psycopg's AdminShutdown, a
    database restarting under a live connection, is an OperationalError)."""
    return any(cls.__name__ in UNREACHABLE for cls in type(exc).__mro__)
