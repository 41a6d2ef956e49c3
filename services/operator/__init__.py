"""Operator tooling and read models: provisioning, the saga state fold, the consistency audit,
the event catalog and schema compatibility. Nothing here runs inside a service."""
