"""`scm.py status ...` (scmflow/cli/status.py): show, verify, export, diagram, through CliRunner."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgpack
from click.testing import CliRunner

from scmflow.cli import main
from scmflow.journal import Journal
from scmflow.journalreader import read_journal
from scmflow.statuskey import ENV_VAR, StatusKey, default_key_path, load_or_create_key
from tests.cli_runner import assert_one_error, error_lines, invoke


def test_status_verify_on_random_bytes_is_one_error_line(workdir: Path) -> None:
    (workdir / "random").write_bytes(bytes(range(256)) * 4)
    for command in ("verify", "show", "export"):
        result = invoke("status", command, "random")
        assert result.exit_code != 0
        assert error_lines(result) == ["[ERROR] random is not an scmflow upgrade status file"]
        assert "Traceback" not in result.output


def test_status_commands_on_a_missing_file(workdir: Path) -> None:
    assert_one_error(invoke("status", "verify", "nothing"), "status file nothing does not exist")
    assert_one_error(
        invoke("status", "list", "--status-dir", "nodir"), "status directory nodir does not exist"
    )


def signed_status(directory: Path, key: StatusKey | None) -> Path:
    """A two-record status file, signed with `key` (None: an unsigned version 1 file)."""
    header = {"run_id": "r1", "plan": [], "hosts": [], "layout": {"install_user": "scmadmin"}}
    with Journal.create(directory, header, key=key) as journal:
        journal.append({"kind": "run", "detail": {"action": "upgrade", "result": "started"}})
        return journal.path


def forge(path: Path, **layout: str) -> None:
    """Rewrite the header's layout and recompute the digest chain, as anyone without the key can."""
    contents = read_journal(path)
    records = [{k: v for k, v in contents.header.items()}, *contents.records]
    records[0]["layout"] = {**records[0]["layout"], **layout}
    out, prev = [], b""
    for record in records:
        if record["seq"]:
            record["prev"] = prev
        body = msgpack.packb(record, use_bin_type=True)
        prev = hashlib.sha256(body).digest()
        out.append(msgpack.packb([body, prev, bytes(32)], use_bin_type=True))
    path.write_bytes(b"".join(out))


def test_status_verify_of_an_intact_and_a_damaged_file(workdir: Path) -> None:
    key = load_or_create_key(default_key_path())
    path = signed_status(workdir / "status", key)
    good = invoke("status", "verify", str(path))
    assert good.exit_code == 0, good.output
    assert good.stdout == (
        "chain:     intact, 2 records\n"
        f"authentic: yes, every record's MAC is valid with status key {key.key_id} ({default_key_path()})\n"
    )
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF  # in the last record's digest
    path.write_bytes(bytes(data))
    bad = invoke("status", "verify", str(path))
    assert bad.exit_code == 1
    assert len(error_lines(bad)) == 1 and str(path) in error_lines(bad)[0]
    assert "is damaged or was tampered with: record 1" in error_lines(bad)[0]
    assert bad.stdout.splitlines()[0].startswith("chain:     broken at record 1 (byte offset ")


def test_status_verify_exits_1_on_a_file_rewritten_with_a_recomputed_chain(workdir: Path) -> None:
    key = load_or_create_key(default_key_path())
    path = signed_status(workdir / "status", key)
    forge(path, install_user="root")

    result = invoke("status", "verify", str(path))

    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        "chain:     intact, 2 records",
        f"authentic: NO, record 0's MAC is not valid with status key {key.key_id} ({default_key_path()}): "
        "it was changed after it was written",
    ]
    assert error_lines(result) == [
        f"[ERROR] {path} is not authentic: record 0's MAC is not valid with status key {key.key_id} "
        f"({default_key_path()}): it was changed after it was written"
    ]


def test_status_verify_without_a_key_or_of_an_unsigned_file_is_not_ok(workdir: Path) -> None:
    key = StatusKey.generate()
    path = signed_status(workdir / "status", key)
    missing = invoke("status", "verify", str(path))
    assert missing.exit_code == 1
    assert missing.stdout.splitlines()[1] == (
        f"authentic: unknown, there is no status key to check its MACs with (the file names status key "
        f"{key.key_id}); there is none at {default_key_path()} (--status-key FILE gives the key of the "
        "machine that wrote it)"
    )
    assert not default_key_path().exists(), "reading never makes a key"
    # the key of the machine that wrote it, given by option or environment
    (workdir / "ctl1.key").write_bytes(key.secret)
    (workdir / "ctl1.key").chmod(0o600)
    assert invoke("status", "verify", str(path), "--status-key", "ctl1.key").exit_code == 0
    given = CliRunner(env={ENV_VAR: str(workdir / "ctl1.key")}).invoke(main, ["status", "verify", str(path)])
    assert given.exit_code == 0, given.output
    old = signed_status(workdir / "old", None)
    unsigned = invoke("status", "verify", str(old), "--status-key", "ctl1.key")
    assert unsigned.exit_code == 1
    assert error_lines(unsigned)[0].endswith(
        "is not authentic: it is in status format version 1, whose records carry no MAC"
    )


def test_a_broken_status_key_is_one_error_line(workdir: Path) -> None:
    path = signed_status(workdir / "status", StatusKey.generate())
    (workdir / "bad.key").write_bytes(b"x" * 32)
    (workdir / "bad.key").chmod(0o644)
    for command in ("verify", "show", "export"):
        result = invoke("status", command, str(path), "--status-key", "bad.key")
        assert_one_error(
            result,
            "the status key bad.key is open to other users (mode 0644); make it private: chmod 600 bad.key",
        )


def test_status_show_and_export_say_whether_the_file_is_authentic(workdir: Path) -> None:
    key = load_or_create_key(default_key_path())
    path = signed_status(workdir / "status", key)
    shown = invoke("status", "show", str(path))
    assert shown.exit_code == 0, shown.output
    assert "  Authentic yes, every record's MAC is valid with status key" in shown.stdout
    exported = json.loads(invoke("status", "export", str(path)).stdout)
    assert exported["authenticity"] == {
        "authentic": True,
        "state": "authentic",
        "first_bad_seq": None,
        "key_id": key.key_id,
        "file_key_id": key.key_id,
        "reason": f"every record's MAC is valid with status key {key.key_id} ({default_key_path()})",
    }
    assert exported["header"]["format_version"] == 2 and exported["header"]["key_id"] == key.key_id
    forge(path, install_user="root")
    shown = invoke("status", "show", str(path))
    assert shown.exit_code == 0 and "  Authentic NO, record 0's MAC is not valid" in shown.stdout
    assert json.loads(invoke("status", "export", str(path)).stdout)["authenticity"]["first_bad_seq"] == 0


def test_status_diagram_is_the_mermaid_lifecycle() -> None:
    result = invoke("status", "diagram")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[:2] == ["stateDiagram-v2", "    [*] --> pending"]
    for edge in (
        "    pending --> backed_up : backup",
        "    backed_up --> replaced : replace",
        "    replaced --> restarted : restart",
        "    restarted --> verified : verify",
        "    verified --> failed : fail",
        "    pending --> rolled_back : rollback (abandon)",
        "    backed_up --> rolled_back : rollback (abandon)",
        "    failed --> rolled_back : rollback (restore)",
        "    verified --> rolled_back : rollback (restore)",
        "    rolled_back --> pending : retry",
        "    verified --> [*]",
        "    rolled_back --> [*]",
        "    note right of failed",
    ):
        assert edge in lines
    assert "    failed --> [*]" not in lines
