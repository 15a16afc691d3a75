"""Export the contracts' JSON Schemas for the legacy runtime (``svcbus.legacy``).

The legacy worker has no pydantic; it validates messages against the JSON
Schema of each channel's contract, read from a file this module writes::

    python -m svcbus.legacy_export contracts.chat contracts.stats -o contracts.json

or from code: ``export_schemas("contracts.json")`` after importing the contracts.
The file maps each channel to its contract's name, version and schema, plus the
reply contract of request/reply channels and a durable contract's settings
(``"durable"``: the ``Durability`` fields, or null) (see ``sdk/legacy/schema.py``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .contract import Contract, ContractRegistry, registry

FILE_VERSION = 1
"""Format version of the schema file (``svcbus_schemas`` key)."""


def contract_entry(contract: type[Contract]) -> dict[str, Any]:
    """Name, version and validation JSON Schema of one contract."""
    return {
        "contract": contract.__contract_name__,
        "version": contract.__version__,
        "schema": contract.model_json_schema(mode="validation"),
    }


def schemas_document(
    contracts: ContractRegistry = registry, channels: Iterable[str] | None = None
) -> dict[str, Any]:
    """The schema file's content for ``channels`` (default: every registered channel)."""
    bound = contracts.channels()
    wanted = sorted(bound) if channels is None else list(channels)
    missing = [c for c in wanted if c not in bound]
    if missing:
        raise KeyError(f"no contract is registered for {', '.join(missing)}")
    out: dict[str, Any] = {}
    for channel in wanted:
        contract = bound[channel]
        entry = contract_entry(contract)
        entry["reply"] = contract_entry(contract.__reply__) if contract.__reply__ else None
        durable = contract.__durability__
        # The legacy worker consumes durable channels (NATS) with the same settings.
        entry["durable"] = asdict(durable) if durable is not None else None
        out[channel] = entry
    return {"svcbus_schemas": FILE_VERSION, "channels": out}


def export_schemas(
    path: str | Path,
    contracts: ContractRegistry = registry,
    channels: Iterable[str] | None = None,
) -> Path:
    """Write the schema file for the legacy worker to ``path``; returns the path."""
    target = Path(path)
    document = schemas_document(contracts, channels)
    target.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m svcbus.legacy_export MODULE... -o FILE``: import contracts, write schemas."""
    parser = argparse.ArgumentParser(
        prog="python -m svcbus.legacy_export",
        description="Write the JSON Schemas of the contracts in MODULEs for svcbus.legacy.",
    )
    parser.add_argument("modules", nargs="+", help="modules that declare the contracts")
    parser.add_argument("-o", "--output", required=True, help="schema file to write")
    parser.add_argument(
        "-c", "--channel", action="append", help="export only this channel (repeatable)"
    )
    args = parser.parse_args(argv)
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        for name in args.modules:
            importlib.import_module(name)
        path = export_schemas(args.output, channels=args.channel)
    except (ImportError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({len(schemas_document(channels=args.channel)['channels'])} channels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
