"""Structured logs: one line per record, `key=value` pairs, always with service, document and saga."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        pairs = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        base = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<5} {record.name} {record.getMessage()}"
        text = f"{base} {pairs}" if pairs else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(service: str) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("UDS3_LOG_LEVEL", "INFO"))
    for noisy in ("aiokafka", "kafka", "neo4j", "eventsourcing"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(service)


def info(logger: logging.Logger, msg: str, **fields: Any) -> None:
    logger.info(msg, extra={"fields": fields})


def warn(logger: logging.Logger, msg: str, **fields: Any) -> None:
    logger.warning(msg, extra={"fields": fields})


def error(logger: logging.Logger, msg: str, exc_info: bool = False, **fields: Any) -> None:
    logger.error(msg, exc_info=exc_info, extra={"fields": fields})
