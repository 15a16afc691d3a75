"""`svc contracts check`: every kind of change, judged for consumers and producers."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import Field, create_model
from typer.testing import CliRunner

from svcbus import Contract
from svcbus.cli.app import app
from svcbus.docs.asyncapi import build_document, to_json, to_yaml
from svcbus.docs.collect import ChannelDoc, System
from svcbus.docs.compat import BREAK, OK, WARN, compare

CHANNEL = "compat.posted"


class Author(Contract):
    name: str
    id: int


class AuthorWithoutId(Contract):
    name: str


AuthorWithoutId.__name__ = "Author"  # same schema name, one field fewer

BASE: dict[str, Any] = {
    "room": (str, Field(max_length=32, description="Room slug.")),
    "text": (str, ...),
    "count": (int, Field(default=0, le=100)),
    "score": (float, 0.0),
    "mood": (Literal["happy", "sad"], "happy"),
    "author": (Author, ...),
}
REPLY: dict[str, Any] = {"posts": (int, ...), "room": (str, ...)}


@dataclass
class Spec:
    """One channel's contract, as the test writes it."""

    fields: dict[str, Any] = field(default_factory=lambda: dict(BASE))
    version: int = 1
    doc: str = "A post."
    reply: dict[str, Any] | None = None
    typed: bool = True


def model(name: str, fields: dict[str, Any], version: int, doc: str) -> type[Contract]:
    made = create_model(  # type: ignore[call-overload]
        name, __base__=Contract, __cls_kwargs__={"version": version}, __doc__=doc, **fields
    )
    return made


def document(channels: dict[str, Spec]) -> dict[str, Any]:
    docs = {}
    for name, spec in channels.items():
        contract = model("Msg", spec.fields, spec.version, spec.doc) if spec.typed else None
        reply = model("Answer", spec.reply, 1, "An answer.") if spec.reply is not None else None
        docs[name] = ChannelDoc(
            name, contract=contract, reply=reply, consumers=["reader"], producers=["writer"]
        )
    return build_document(System(title="compat", services=[], channels=docs))


def changed(**overrides: Any) -> dict[str, Any]:
    fields = dict(BASE)
    for key, value in overrides.items():
        if value is None:
            fields.pop(key)
        else:
            fields[key] = value
    return fields


def one(fields: dict[str, Any] | None = None, **spec: Any) -> dict[str, Spec]:
    return {CHANNEL: Spec(fields=fields if fields is not None else dict(BASE), **spec)}


def with_reply(reply: dict[str, Any]) -> dict[str, Spec]:
    return {CHANNEL: Spec(reply=reply)}


# (id, old, new, kind expected, consumers, producers, fails the check)
CASES = [
    # --- breaking ---------------------------------------------------------
    ("field-removed", one(), one(changed(text=None)), "field-removed", BREAK, OK, True),
    ("type-changed", one(), one(changed(text=(int, ...))), "type-changed", BREAK, BREAK, True),
    (
        "type-narrowed",
        one(),
        one(changed(score=(int, 0))),
        "type-narrowed",
        OK,
        BREAK,
        True,
    ),
    (
        "required-field-added",
        one(),
        one(changed(lang=(str, ...))),
        "field-added-required",
        OK,
        BREAK,
        True,
    ),
    (
        "optional-to-required",
        one(),
        one(changed(count=(int, Field(le=100)))),
        "optional-to-required",
        OK,
        BREAK,
        True,
    ),
    (
        "required-to-optional",
        one(),
        one(changed(text=(str, ""))),
        "required-to-optional",
        BREAK,
        OK,
        True,
    ),
    (
        "enum-value-removed",
        one(),
        one(changed(mood=(Literal["happy"], "happy"))),
        "enum-value-removed",
        OK,
        BREAK,
        True,
    ),
    (
        "max-length-tightened",
        one(),
        one(changed(room=(str, Field(max_length=16)))),
        "constraint-tightened",
        OK,
        BREAK,
        True,
    ),
    (
        "maximum-tightened",
        one(),
        one(changed(count=(int, Field(default=0, le=50)))),
        "constraint-tightened",
        OK,
        BREAK,
        True,
    ),
    (
        "pattern-added",
        one(),
        one(changed(room=(str, Field(max_length=32, pattern=r"^[a-z]+$")))),
        "constraint-tightened",
        OK,
        BREAK,
        True,
    ),
    (
        "pattern-changed",
        one(changed(room=(str, Field(max_length=32, pattern=r"^[a-z]+$")))),
        one(changed(room=(str, Field(max_length=32, pattern=r"^[0-9]+$")))),
        "pattern-changed",
        WARN,
        BREAK,
        True,
    ),
    (
        "nested-field-removed",
        one(),
        one(changed(author=(AuthorWithoutId, ...))),
        "field-removed",
        BREAK,
        OK,
        True,
    ),
    (
        "channel-removed",
        {**one(), "compat.other": Spec()},
        one(),
        "channel-removed",
        BREAK,
        BREAK,
        True,
    ),
    (
        "message-removed",
        one(),
        one(typed=False),
        "message-removed",
        BREAK,
        BREAK,
        True,
    ),
    (
        # the reply is written by the channel's consumers and read by its producers
        "reply-field-removed",
        with_reply(REPLY),
        with_reply({"room": (str, ...)}),
        "field-removed",
        OK,
        BREAK,
        True,
    ),
    (
        "reply-field-added-required",
        with_reply(REPLY),
        with_reply({**REPLY, "top": (list[str], ...)}),
        "field-added-required",
        BREAK,
        OK,
        True,
    ),
    ("reply-removed", with_reply(REPLY), one(), "reply-removed", OK, BREAK, True),
    (
        "version-not-bumped",
        one(),
        one(changed(text=None)),
        "version-not-bumped",
        BREAK,
        BREAK,
        True,
    ),
    ("version-decreased", one(version=3), one(version=2), "version-decreased", BREAK, BREAK, True),
    # --- compatible (warnings do not fail the check) ------------------------
    (
        "optional-field-added",
        one(),
        one(changed(lang=(str, "en"))),
        "field-added-optional",
        OK,
        OK,
        False,
    ),
    ("channel-added", one(), {**one(), "compat.new": Spec()}, "channel-added", OK, OK, False),
    (
        "description-changed",
        one(),
        one(doc="A post, edited."),
        "description-changed",
        OK,
        OK,
        False,
    ),
    (
        "field-description-changed",
        one(),
        one(changed(room=(str, Field(max_length=32, description="The room.")))),
        "description-changed",
        OK,
        OK,
        False,
    ),
    (
        "enum-value-added",
        one(),
        one(changed(mood=(Literal["happy", "sad", "angry"], "happy"))),
        "enum-value-added",
        WARN,
        OK,
        False,
    ),
    (
        "constraint-loosened",
        one(),
        one(changed(room=(str, Field(max_length=64, description="Room slug.")))),
        "constraint-loosened",
        WARN,
        OK,
        False,
    ),
    (
        "type-widened",
        one(),
        one(changed(count=(int | None, Field(default=0, le=100)))),
        "type-widened",
        WARN,
        OK,
        False,
    ),
    ("version-bumped", one(), one(version=2), "version-bumped", OK, OK, False),
    ("reply-added", one(), with_reply(REPLY), "reply-added", OK, OK, False),
    ("no-change", one(), one(), None, OK, OK, False),
]


@pytest.mark.parametrize(
    ("old", "new", "kind", "consumers", "producers", "fails"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_change_kinds(old, new, kind, consumers, producers, fails) -> None:
    report = compare(document(old), document(new))
    if kind is None:
        assert report.changes == []
        return
    matching = [c for c in report.changes if c.kind == kind]
    assert matching, f"no {kind} in {[c.kind for c in report.changes]}"
    assert (matching[0].consumers, matching[0].producers) == (consumers, producers)
    assert bool(report.breaking) is fails, report.changes


def test_the_table_is_big_enough() -> None:
    breaking = {c[3] for c in CASES if c[6]}
    compatible = {c[3] for c in CASES if not c[6] and c[3]}
    assert len(breaking) >= 10 and len(compatible) >= 5


def test_a_bumped_version_is_not_reported_as_not_bumped() -> None:
    report = compare(document(one()), document(one(changed(text=None), version=2)))
    assert {"field-removed", "version-bumped"} <= report.kinds()
    assert "version-not-bumped" not in report.kinds()
    assert report.breaking  # a bump announces a break; it does not make it safe


def test_reply_paths_are_marked() -> None:
    report = compare(document(with_reply(REPLY)), document(with_reply({"room": (str, ...)})))
    assert [c.path for c in report.changes if c.kind == "field-removed"] == ["reply:posts"]


# -- the CLI -------------------------------------------------------------------


def write(path: Path, channels: dict[str, Spec], *, as_yaml: bool = False) -> str:
    doc = document(channels)
    path.write_text(to_yaml(doc) if as_yaml else to_json(doc))
    return str(path)


def run(*args: str) -> Any:
    return CliRunner().invoke(app, ["contracts", "check", *args])


def test_cli_exit_codes(tmp_path: Path) -> None:
    old = write(tmp_path / "old.json", one())
    same = write(tmp_path / "same.yaml", one(), as_yaml=True)
    breaking = write(tmp_path / "breaking.json", one(changed(text=None)))
    warning = write(tmp_path / "warning.json", one(changed(mood=(Literal["happy", "x"], "happy"))))
    warning_only = write(
        tmp_path / "warning-only.json",
        one(changed(mood=(Literal["happy", "sad", "x"], "happy"))),
    )

    result = run(old, same)
    assert result.exit_code == 0, result.output
    assert "no contract changes" in result.output

    result = run(old, breaking)
    assert result.exit_code == 1
    assert "field-removed" in result.output and "1 breaking" not in result.output
    assert "breaking" in result.output

    assert run(old, warning).exit_code == 1  # "sad" removed
    assert run(old, warning_only).exit_code == 0
    assert run(old, warning_only, "--strict").exit_code == 1

    result = run(old, breaking, "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["breaking"] == 2  # field removed + version not bumped
    assert {c["kind"] for c in data["changes"]} == {"field-removed", "version-not-bumped"}


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    old = write(tmp_path / "old.json", one())
    (tmp_path / "not-asyncapi.json").write_text(json.dumps({"openapi": "3.1.0"}))
    (tmp_path / "garbage.yaml").write_text("{ this: is: not: yaml")
    for args, message in [
        ((old, str(tmp_path / "missing.json")), "no such file"),
        ((old, str(tmp_path / "not-asyncapi.json")), "not an AsyncAPI 3 document"),
        ((old, str(tmp_path / "garbage.yaml")), "neither JSON nor YAML"),
        ((old, "git:HEAD"), "git:REF:path"),
    ]:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output


def test_cli_reads_files_at_git_refs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    write(tmp_path / "asyncapi.yaml", one(), as_yaml=True)
    git("add", "asyncapi.yaml")
    git("commit", "-q", "-m", "v1")
    write(tmp_path / "asyncapi.yaml", one(changed(lang=(str, ...))), as_yaml=True)
    monkeypatch.chdir(tmp_path)

    result = run("git:HEAD:asyncapi.yaml", "asyncapi.yaml")
    assert result.exit_code == 1, result.output
    assert "field-added-required" in result.output
    assert run("git:HEAD:asyncapi.yaml", "git:HEAD:asyncapi.yaml").exit_code == 0
    missing = run("git:HEAD:nope.yaml", "asyncapi.yaml")
    assert missing.exit_code == 2 and "nope.yaml" in missing.output
    assert yaml.safe_load((tmp_path / "asyncapi.yaml").read_text())["asyncapi"] == "3.0.0"
