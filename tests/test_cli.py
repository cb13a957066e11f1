"""The `archivist` command as users run it: a real process, real files, exact output."""

from __future__ import annotations

import base64
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_jsonl


def archivist(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "archivist", *args], capture_output=True,
                            cwd=cwd, env={**os.environ, **(env or {})}, input=stdin,
                            timeout=300)
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode(), result.stderr.decode())


@pytest.fixture
def installed(config_path):
    result = archivist("init", "--config", str(config_path))
    assert result.returncode == 0, result.stderr
    return config_path


def test_the_command_runs_from_archivist_cli_and_the_core_loads_no_layer_above(installed):
    code = (
        "import sys\n"
        "from archivist.cli import main\n"
        "layers = ('cli', 'server', 'indexer')\n"
        "above = sorted(m for m in sys.modules if m.split('.')[0] in layers)\n"
        "assert above == [], above\n"
        f"main(['stats', '--config', {str(installed)!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["active"] == 0
    unknown = "from archivist.cli import main; main(['nope'])"
    failed = subprocess.run([sys.executable, "-c", unknown], capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode == 2 and "No such command 'nope'" in failed.stderr


def test_init_is_idempotent_and_creates_what_the_config_names(config_path):
    for _ in range(2):
        assert archivist("init", "--config", str(config_path)).returncode == 0
    folder = config_path.parent
    assert (folder / "data" / "active.db").is_file()
    assert (folder / "data" / "archive" / "catalog.db").is_file()
    assert (folder / "data" / "index").is_dir()


def test_the_archive_and_index_folders_and_lock_files_are_their_owner_s_alone(
    config_path, make_record, tmp_path
):
    """The index holds words and addresses in plain text, and a lock file anyone could open
    and lock stalled every erasure: both folders are 0700, lock files 0600, with umask 022,
    and an installation an earlier version made 0755 is made so when next opened."""
    data = config_path.parent / "data"
    old = os.umask(0o022)
    try:
        assert archivist("init", "--config", str(config_path)).returncode == 0
        for folder in (data / "archive", data / "index"):
            assert folder.stat().st_mode & 0o777 == 0o700, folder
        lines = write_jsonl(tmp_path / "in.jsonl", [make_record(id="P-1")])
        assert archivist("import", str(lines), "--config", str(config_path)).returncode == 0
        assert archivist("archive", "--as-of", "2031-01-01", "--config",
                         str(config_path)).returncode == 0
        for folder in (data / "archive", data / "index"):
            assert folder.stat().st_mode & 0o777 == 0o700, folder
        locks = [p for p in data.rglob("*") if p.suffix == ".lock" or p.name == "HOLD"]
        assert locks and all(p.stat().st_mode & 0o077 == 0 for p in locks), locks
        (data / "index").chmod(0o755)  # as an earlier version left it
        assert archivist("stats", "--config", str(config_path)).returncode == 0
        assert (data / "index").stat().st_mode & 0o777 == 0o700
    finally:
        os.umask(old)


def test_init_creates_every_table_even_those_declared_beside_their_code(installed):
    """`init` loads only what it needs; the tables of web sessions and of the CRM tables'
    archive runs must exist all the same."""
    with sqlite3.connect(installed.parent / "data" / "active.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"web_sessions", "archived_process_members", "job_run_blocks", "disposals"} <= tables


def test_import_reports_bad_lines_and_prints_the_summary(installed, tmp_path, make_record):
    path = write_jsonl(tmp_path / "in.jsonl", [make_record(id="ok1"), "{nope",
                                                make_record(id="bad/id"), make_record(id="ok2")])
    result = archivist("import", str(path), "--config", str(installed))
    assert result.returncode == 0
    assert result.stdout.strip() == "imported 2, rejected 2"
    assert result.stderr.splitlines() == [
        "line 2: malformed JSON: Expecting property name enclosed in double quotes at column 2",
        "line 3: id must be 1-128 characters of A-Z a-z 0-9 . _ : - (not '.' or '..' alone), "
        "got 'bad/id'",
    ]


def test_import_reads_stdin_and_config_from_the_environment(installed, make_record):
    lines = (json.dumps(make_record(id="s1")) + "\n").encode()
    result = archivist("import", "-", env={"ARCHIVIST_CONFIG": str(installed)}, stdin=lines)
    assert result.stdout.strip() == "imported 1, rejected 0"


def test_an_as_of_finer_than_a_microsecond_takes_no_record_after_it(
    installed, tmp_path, make_record
):
    """`as_of` is the upper end of what is aged or due: the digits past the microsecond are
    dropped, not rounded up to take in a record a fraction of a microsecond after the cutoff."""
    at = "2025-01-01T00:00:00.000002Z"
    write_jsonl(tmp_path / "in.jsonl", [make_record(id="NS", created_at=at, updated_at=at)])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))

    def dry(command: str, as_of: str) -> str:
        return archivist(command, "--as-of", as_of, "--dry-run", "--config",
                         str(installed)).stdout.splitlines()[0]

    # aged at 365 days, kept 5 years (from updated_at)
    assert dry("archive", "2026-01-01T00:00:00.0000019Z") == "would archive 0"
    assert dry("archive", "2026-01-01T00:00:00.000002Z") == "would archive 1"
    archivist("archive", "--as-of", "2027-01-01", "--config", str(installed))
    assert dry("dispose", "2030-01-01T00:00:00.0000019Z") == "would purge 0"
    assert dry("dispose", "2030-01-01T00:00:00.000002Z") == "would purge 1"


def test_archive_dry_run_then_archive_then_stats(installed, tmp_path, make_record):
    write_jsonl(tmp_path / "in.jsonl", [
        make_record(id="a", category="finance", updated_at="2025-01-01T00:00:00Z"),
        make_record(id="b", category="support", updated_at="2025-01-01T00:00:00Z"),
        make_record(id="c", category="support", updated_at="2025-12-01T00:00:00Z"),
    ])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))
    dry = archivist("archive", "--as-of", "2026-01-01", "--dry-run", "--config", str(installed))
    assert dry.stdout.splitlines() == ["would archive 2", "  finance: 1", "  support: 1"]
    result = archivist("archive", "--as-of", "2026-01-01", "--config", str(installed))
    assert result.stdout.strip() == "archived 2, indexed 2"
    stats = json.loads(archivist("stats", "--config", str(installed)).stdout)
    assert {k: stats[k] for k in ("active", "archived", "indexed", "restored", "purged")} == {
        "active": 1, "archived": 2, "indexed": 2, "restored": 0, "purged": 0}
    assert stats["last_run"]["archived"] == 2 and stats["last_run"]["error"] is None
    purge = archivist("dispose", "--as-of", "2031-01-02", "--config", str(installed))
    assert purge.stdout.strip() == "purged 1"  # support keeps 5 years, finance 7


def test_holds_round_trip(installed):
    add = archivist("hold", "add", "--customer", "C9", "--reason", "case 17",
                    "--config", str(installed))
    assert add.returncode == 0
    listed = archivist("hold", "list", "--config", str(installed)).stdout
    assert listed.startswith("customer\tC9\t") and listed.rstrip().endswith("\tcase 17")
    assert archivist("hold", "add", "--category", "medical", "--reason", "audit 3",
                     "--config", str(installed)).returncode == 0
    one = archivist("hold", "list", "--customer", "C9", "--config", str(installed)).stdout
    assert one == listed
    none = archivist("hold", "list", "--record", "C9", "--config", str(installed)).stdout
    assert none == "no legal holds\n"
    assert archivist("hold", "remove", "--category", "medical",
                     "--config", str(installed)).returncode == 0
    again = archivist("hold", "add", "--customer", "C9", "--reason", "x",
                      "--config", str(installed))
    assert again.returncode == 1
    assert again.stderr.strip() == "error: customer 'C9' is already on hold: case 17"
    assert archivist("hold", "remove", "--customer", "C9", "--config",
                     str(installed)).returncode == 0
    missing = archivist("hold", "remove", "--customer", "C9", "--config", str(installed))
    assert missing.returncode == 1 and "not on hold" in missing.stderr
    both = archivist("hold", "add", "--customer", "C9", "--record", "r", "--reason", "x",
                     "--config", str(installed))
    assert both.returncode != 0 and "exactly one of" in both.stderr
    tab = archivist("hold", "add", "--customer", "C9\t", "--reason", "x",
                    "--config", str(installed))
    assert tab.returncode == 1 and "control characters" in tab.stderr
    # a hold that looks in force but could match no record is refused, not placed
    spaced = archivist("hold", "add", "--customer", "C9 ", "--reason", "x",
                       "--config", str(installed))
    assert spaced.returncode == 1 and "begin or end with a space" in spaced.stderr
    not_an_id = archivist("hold", "add", "--record", "REC 1", "--reason", "x",
                          "--config", str(installed))
    assert not_an_id.returncode == 1 and "must name a record id" in not_an_id.stderr
    for scope, limit in (("--customer", 256), ("--category", 128)):  # as the API's
        too_long = archivist("hold", "add", scope, "x" * (limit + 1), "--reason", "x",
                             "--config", str(installed))
        assert too_long.returncode == 1 and f"at most {limit} characters" in too_long.stderr
    assert archivist("hold", "list", "--config", str(installed)).stdout == "no legal holds\n"


@pytest.mark.parametrize("args", [(), ("hold",), ("backup",), ("token",),
                                  ("--config", "config.toml", "stats")])
def test_a_missing_command_or_a_misplaced_option_is_one_line_too(args):
    result = archivist(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    if args[:1] == ("hold",):
        assert result.stderr == (
            "error: missing command, one of: add, list, remove (see archivist hold --help)\n"
        )


@pytest.mark.parametrize("args", [
    ("restore", "R1", "--search", "q=x", "--reason", "r"),
    ("restore", "--reason", "r"),
    ("restore", "R1", "--reason", ""),
    ("erase", "--reason", "x"),
    ("erase", "--customer", "A", "--record", "B", "--reason", "x"),
    ("erase", "--customer", "", "--reason", "x"),
    ("hold", "add", "--reason", "x"),
    ("hold", "list", "--customer", "A", "--record", "B"),
    ("archive", "--bogus"),
    ("restore", "R1"),
    ("no-such-command",),
])
def test_a_usage_error_is_one_line_on_stderr(installed, args):
    result = archivist(*args, "--config", str(installed))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args", [
    ("stats",), ("import", "-"), ("archive",), ("hold", "add", "--customer", "C1", "--reason", "x"),
    ("token", "create", "--role", "admin", "--name", "x"), ("restore", "R1", "--reason", "r"),
])
def test_a_command_before_init_says_so_in_one_line_and_writes_nothing(tmp_path, args):
    """Even with the archive key in the environment (which spares the key file's check)."""
    (tmp_path / "config.toml").write_text(
        '[active]\nurl = "sqlite:///data/active.db"\n[archive]\ndir = "data/archive"\n'
        '[index]\ndir = "data/index"\n'
    )
    key = base64.b64encode(os.urandom(32)).decode()
    result = archivist(*args, "--config", str(tmp_path / "config.toml"),
                       env={"ARCHIVIST_ARCHIVE_KEY": key}, stdin=b"")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("run `archivist init` first")
    assert result.stderr.count("\n") == 1
    assert list(tmp_path.rglob("*")) == [tmp_path / "config.toml"]  # not even a folder


def test_verify_names_exactly_the_damaged_record(installed, tmp_path, make_record):
    write_jsonl(tmp_path / "in.jsonl", [make_record(id=f"V{i:03d}", body=os.urandom(1500).hex())
                                        for i in range(100)])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))
    archivist("archive", "--as-of", "2026-01-01", "--config", str(installed))
    assert archivist("verify", "--config", str(installed)).returncode == 0
    archive = installed.parent / "data" / "archive"
    catalog = sqlite3.connect(archive / "catalog.db")
    segment_id, generation = catalog.execute(
        "SELECT segment_id, generation FROM segments WHERE sealed = 1 LIMIT 1").fetchone()
    record_id, offset, length = catalog.execute(
        "SELECT record_id, offset, length FROM records WHERE segment_id = ? ORDER BY seq "
        "LIMIT 1 OFFSET 3", (segment_id,)).fetchone()
    catalog.close()
    path = archive / "segments" / f"{segment_id:06d}.{generation}.seg"
    damaged = bytearray(path.read_bytes())
    damaged[offset + length // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    result = archivist("verify", "--config", str(installed))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == f"damaged or missing: {record_id}"


def test_an_active_database_out_of_reach_is_one_line_and_exit_1(tmp_path):
    config = tmp_path / "c.toml"
    out_of_reach = '[active]\nurl = "postgresql+psycopg://nobody@127.0.0.1:1/crm"\n'
    config.write_text(out_of_reach)
    result = archivist("init", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: the active database: connection failed: ")
    # nothing made: no archive folder, no key a later `init` would have to match
    assert sorted(tmp_path.rglob("*")) == [config]

    config.write_text("")  # an installation on the embedded default, then its database gone
    assert archivist("init", "--config", str(config)).returncode == 0
    config.write_text(out_of_reach)
    result = archivist("stats", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: the active database: connection failed: ")


def test_an_active_database_file_that_is_no_database_is_one_line_and_exit_1(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[active]\nurl = "sqlite:///c.toml"\n')  # the database "file" is the config
    result = archivist("init", "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert result.stderr == "error: the active database (active.url): file is not a database\n"
    # an installation whose database file was overwritten
    config.write_text('[active]\nurl = "sqlite:///active.db"\n')
    assert archivist("init", "--config", str(config)).returncode == 0
    (tmp_path / "active.db").write_bytes(b"not a database " * 1000)
    result = archivist("stats", "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert result.stderr == "error: the active database (active.url): file is not a database\n"


def test_a_folder_that_is_a_file_is_one_line_naming_it(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[archive]\ndir = "c.toml"\n')  # the archive "folder" is the config
    for command in ("init", "stats"):
        result = archivist(command, "--config", str(config))
        assert result.returncode == 1, command
        assert result.stderr.startswith("error: Not a directory: "), result.stderr
        assert "c.toml" in result.stderr and result.stderr.count("\n") == 1


def test_a_missing_active_database_file_is_named_not_made_anew(installed):
    """A typo in `[active] url`, or the file gone: connecting would make an empty database
    (the CRM's tables then reported missing, or every active record silently gone)."""
    database = installed.parent / "data" / "active.db"
    database.unlink()
    for command in ("stats", "archive"):
        result = archivist(command, "--config", str(installed))
        assert result.returncode == 1, command
        assert result.stderr == (f"error: no active database at {database}: check [active] "
                                 "url, or run `archivist init` first\n")
        assert not database.exists()
    assert archivist("init", "--config", str(installed)).returncode == 0
    assert archivist("stats", "--config", str(installed)).returncode == 0


def test_an_archive_folder_gone_while_records_were_archived_is_not_made_anew(
    installed, tmp_path, make_record
):
    """An archive volume not mounted leaves an empty mount point: `init` must not start a
    second, empty archive there, nor `archive` move records into it."""
    write_jsonl(tmp_path / "in.jsonl", [make_record(id=f"M{i:03d}") for i in range(20)])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))
    assert archivist("archive", "--as-of", "2026-01-01", "--config", str(installed)).stdout \
        == "archived 20, indexed 20\n"
    write_jsonl(tmp_path / "more.jsonl", [make_record(id=f"N{i:03d}") for i in range(5)])
    archivist("import", str(tmp_path / "more.jsonl"), "--config", str(installed))
    archive = installed.parent / "data" / "archive"
    archive.rename(tmp_path / "away")
    archive.mkdir()  # the mount point

    for args in (("init",), ("stats",), ("verify",), ("archive", "--as-of", "2026-01-01"),
                 ("index",)):
        result = archivist(*args, "--config", str(installed))
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr == (
            f"error: there is no archive in {archive}, yet the index in "
            f"{installed.parent / 'data' / 'index'} holds 20 archived records (a folder "
            "deleted, or a volume not mounted): mount or restore it (`archivist backup "
            "recover`); nothing was created there\n"), args
        assert list(archive.iterdir()) == []
    shutil.rmtree(installed.parent / "data" / "index")  # the index gone too: the database says
    result = archivist("init", "--config", str(installed))
    assert result.returncode == 1 and "init" not in result.stderr
    assert "yet the active database's job runs archived 20 records (a folder deleted, or a " \
        "volume not mounted)" in result.stderr
    assert list(archive.iterdir()) == []
    assert not (installed.parent / "data" / "index").exists()

    archive.rmdir()
    (tmp_path / "away").rename(archive)  # mounted again: nothing lost, nothing hidden
    assert archivist("index", "--rebuild", "--config", str(installed)).returncode == 0
    assert archivist("verify", "--config", str(installed)).returncode == 0
    stats = json.loads(archivist("stats", "--config", str(installed)).stdout)
    assert stats["archived"] == 20 and stats["active"] == 5


def test_an_archive_folder_gone_before_anything_was_archived_is_made_again(installed):
    """Nothing says an archive held records: `init` makes it again, as on a new installation."""
    shutil.rmtree(installed.parent / "data" / "archive")
    assert "run `archivist init` first" in archivist("stats", "--config", str(installed)).stderr
    assert archivist("init", "--config", str(installed)).returncode == 0
    assert archivist("stats", "--config", str(installed)).returncode == 0


def archivist_on_a_full_disk(limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`archivist ARGS` unable to grow any file past `limit` bytes, as on a full disk (the
    write fails with EFBIG, its signal ignored, instead of ending the process)."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([sys.executable, "-m", "archivist", *args], capture_output=True,
                            text=True, preexec_fn=limit_files, timeout=300)
    return result


def test_a_full_disk_under_the_archive_is_one_line_naming_the_file(
    installed, tmp_path, make_record
):
    """Neither a bug (exit 2, "unexpected") nor a move half made: the records stay active."""
    write_jsonl(tmp_path / "in.jsonl", [make_record(id=f"F{i:03d}", body="refund " * 3)
                                        for i in range(400)])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))
    archive = installed.parent / "data" / "archive"
    for limit, said in (
        # (the active database is read first, for the archive's recorded head: its shared
        # memory file is the first one that cannot be made)
        (1_000, "error: the active database: disk I/O error\n"),
        (45_000, f"error: File too large: {archive / 'segments' / '000001.0.seg'}\n"),
        # (past the segment file's 60-odd KB, short of the catalog's write-ahead log)
        (72_000, f"error: the archive catalog {archive / 'catalog.db'}: "),
    ):
        full = archivist_on_a_full_disk(limit, "archive", "--as-of", "2026-01-01",
                                        "--config", str(installed))
        assert (full.returncode, full.stdout) == (1, ""), (limit, full.stderr)
        assert full.stderr.startswith(said) and full.stderr.count("\n") == 1, full.stderr
    stats = archivist_on_a_full_disk(1_000, "stats", "--config", str(installed))
    assert stats.returncode == 1 and stats.stderr == "error: the active database: disk I/O error\n"

    assert json.loads(archivist("stats", "--config", str(installed)).stdout)["active"] == 400
    result = archivist("archive", "--as-of", "2026-01-01", "--config", str(installed))
    assert result.stdout == "archived 400, indexed 400\n"
    assert archivist("verify", "--config", str(installed)).returncode == 0


def test_a_full_disk_under_a_rebuild_is_one_line_naming_the_index_folder(
    installed, tmp_path, make_record
):
    """Each index worker's own reason once, the folder it wrote named, no broken pipes; the
    index in use stays whole."""
    write_jsonl(tmp_path / "in.jsonl", [make_record(id=f"F{i:04d}", body=f"refund word{i} " * 20)
                                        for i in range(3000)])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))
    assert archivist("archive", "--as-of", "2026-01-01", "--config", str(installed)).returncode == 0
    index = installed.parent / "data" / "index"

    full = archivist_on_a_full_disk(300_000, "index", "--rebuild", "--config", str(installed))
    assert (full.returncode, full.stdout) == (1, ""), full.stderr
    assert full.stderr.startswith("error: index workers failed: OSError: [Errno 27] File too large"
                                  f" (writing {index / 'g000002'})\n"), full.stderr
    assert "Broken pipe" not in full.stderr and full.stderr.count("File too large") == 1
    assert sorted(p.name for p in index.iterdir()) == ["CURRENT", "g000001"]
    assert archivist("verify", "--config", str(installed)).returncode == 0


def test_an_unreadable_archive_catalog_is_one_line_naming_it(installed):
    catalog = installed.parent / "data" / "archive" / "catalog.db"
    catalog.write_bytes(os.urandom(8192))
    for command in ("stats", "verify"):
        result = archivist(command, "--config", str(installed))
        assert (result.returncode, result.stderr) == (
            1, f"error: the archive catalog {catalog}: file is not a database\n"), command


def test_a_restore_by_a_refused_search_says_so_in_one_clean_line(installed):
    result = archivist("restore", "--search", "q=*a", "--reason", "x",
                       "--config", str(installed))
    assert result.returncode == 1
    assert result.stderr == "error: a wildcard cannot start a term\n"  # no progress bar drawn


def test_bad_config_is_one_line_and_non_zero(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[retention.default]\nkeep_years = -3\n")
    result = archivist("stats", "--config", str(bad))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}: retention.default.keep_years must not be negative, got -3"]


def test_verify_names_a_record_missing_from_the_index(installed, tmp_path, make_record):
    write_jsonl(tmp_path / "in.jsonl", [make_record(id=f"X{i}") for i in range(20)])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))
    archivist("archive", "--as-of", "2026-01-01", "--config", str(installed))
    from archivist.config import load_config
    from indexer.services import Services

    with Services.open(load_config(installed)) as services:
        services.index.delete(["X7"])  # the index loses a record behind the catalog's back
    result = archivist("verify", "--config", str(installed))
    assert result.returncode == 1
    assert "X7: archived but missing from the index" in result.stderr
    assert result.stderr.splitlines()[-1] == "damaged or missing: X7"


def test_verify_names_a_restored_record_the_index_still_holds_apart_from_damage(
    installed, tmp_path, make_record
):
    write_jsonl(tmp_path / "in.jsonl", [make_record(id=f"X{i}") for i in range(20)])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))
    archivist("archive", "--as-of", "2026-01-01", "--config", str(installed))
    from archivist.config import load_config
    from indexer.services import Services

    with Services.open(load_config(installed)) as services:
        record, archived_at = services.store.get("X7"), services.store.info("X7").archived_at
    assert archivist("restore", "X7", "--reason", "x", "--config", str(installed)).returncode == 0
    with Services.open(load_config(installed)) as services:
        services.index.add([(record, archived_at)])  # back in, behind the catalog's back
    result = archivist("verify", "--config", str(installed))
    assert result.returncode == 1
    assert "X7: restored but still in the index" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "in the index though not archived (`archivist index --rebuild` takes them out): X7"
    )
    assert "damaged or missing" not in result.stderr
    assert archivist("index", "--rebuild", "--config", str(installed)).returncode == 0
    assert archivist("verify", "--config", str(installed)).returncode == 0


def test_an_index_built_before_processes_is_named_by_verify_and_rebuilt_by_init(
    installed, tmp_path, make_record
):
    """An installation upgraded from a version without processes: its index shards lack the
    process fields, and records archived since were added to them without those fields."""
    from whoosh import index as windex

    from indexer.whoosh.index import SearchIndex
    from indexer.whoosh.schema import build_schema

    old_index = SearchIndex.open(installed.parent / "data" / "index")
    schema = build_schema()
    for name in ("parent_id", "process_id"):
        schema.remove(name)
    shard = old_index._current_gen() / "2025"
    shard.mkdir()
    windex.create_in(str(shard), schema)
    old_index.close()
    at = "2025-03-01T00:00:00Z"
    write_jsonl(tmp_path / "in.jsonl", [
        make_record(id="P-1", created_at=at, updated_at=at),
        make_record(id="P-1-a", parent_id="P-1", created_at=at, updated_at=at),
        make_record(id="Q-1", created_at=at, updated_at=at),
    ])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))
    archived = archivist("archive", "--as-of", "2027-06-01", "--config", str(installed))
    assert archived.stdout.strip() == "archived 3, indexed 3"
    by_process = ("restore", "--search", "process=P-1", "--reason", "r", "--dry-run",
                  "--config", str(installed))

    refused = archivist(*by_process)
    verified = archivist("verify", "--config", str(installed))

    outdated = ("the index was built by an earlier version: it has no parent_id and "
                "process_id fields, so it cannot search by process")
    assert refused.returncode == 1 and outdated in refused.stderr  # not "would restore 0"
    assert verified.returncode == 1 and outdated in verified.stderr
    init = archivist("init", "--config", str(installed))
    assert init.returncode == 0
    assert init.stdout.startswith("rebuilding the search index: it was built by an earlier")
    assert archivist(*by_process).stdout.strip() == "would restore 2 (1 processes)"
    assert archivist("verify", "--config", str(installed)).returncode == 0
    assert archivist("init", "--config", str(installed)).stdout.startswith("initialised")


def kept_subjects(index_dir: Path) -> list[str]:
    """The subjects the live generation keeps as stored fields (the index's term dictionary has
    the words; stored fields would have the text as written)."""
    from whoosh import index as windex

    gen = index_dir / (index_dir / "CURRENT").read_text().strip()
    subjects = []
    for shard in sorted(p for p in gen.iterdir() if windex.exists_in(str(p))):
        with windex.open_dir(str(shard)).searcher() as searcher:
            subjects += [f["stored"][5] for f in searcher.all_stored_fields()]
    return [s for s in subjects if s is not None]


def test_an_index_keeping_record_text_is_named_by_verify_and_rebuilt_without_it_by_init(
    installed, tmp_path, make_record
):
    """An index made before encryption at rest kept each record's subject and the start of its
    body as stored fields, in plain text, beside the encrypted archive."""
    from indexer.whoosh.index import SearchIndex

    index_dir = installed.parent / "data" / "index"
    shutil.rmtree(index_dir)
    SearchIndex.open(index_dir).close()  # as an earlier version made it: text kept
    phrase = "the quarterly figures of Zephyr Holdings"
    write_jsonl(tmp_path / "in.jsonl", [make_record(id=f"T{i}", subject=phrase) for i in range(3)])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))
    archivist("archive", "--as-of", "2027-06-01", "--config", str(installed))

    assert kept_subjects(index_dir) == [phrase] * 3
    verified = archivist("verify", "--config", str(installed))
    assert verified.returncode == 1
    assert ("the index was built by an earlier version: it keeps record text in plain text in "
            "its stored fields; `archivist index --rebuild` rebuilds it") in verified.stderr
    init = archivist("init", "--config", str(installed))
    assert init.stdout.startswith("rebuilding the search index: it was built by an earlier")
    assert kept_subjects(index_dir) == []
    assert archivist("verify", "--config", str(installed)).returncode == 0


def test_an_empty_index_of_an_earlier_version_is_rebuilt_by_init_before_records_keep_text(
    installed, tmp_path, make_record
):
    """An index made before encryption at rest but holding no record yet (nothing archived,
    or the only run crashed before indexing) still writes text into the records indexed later."""
    from indexer.whoosh.index import SearchIndex

    index_dir = installed.parent / "data" / "index"
    shutil.rmtree(index_dir)
    SearchIndex.open(index_dir).close()  # as an earlier version made it: text kept
    init = archivist("init", "--config", str(installed))
    assert init.stdout.startswith("rebuilding the search index: it was built by an earlier")

    write_jsonl(tmp_path / "in.jsonl", [make_record(id="E1", subject="Zephyr Holdings")])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))
    archivist("archive", "--as-of", "2027-06-01", "--config", str(installed))
    assert kept_subjects(index_dir) == []
    assert archivist("verify", "--config", str(installed)).returncode == 0


def test_init_over_a_damaged_index_still_initialises_and_verify_names_it(
    installed, tmp_path, make_record
):
    write_jsonl(tmp_path / "in.jsonl", [make_record(id=f"D{i}") for i in range(5)])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))
    archivist("archive", "--as-of", "2027-06-01", "--config", str(installed))
    (installed.parent / "data" / "index" / "CURRENT").unlink()

    init = archivist("init", "--config", str(installed))
    verified = archivist("verify", "--config", str(installed))

    assert init.returncode == 0, init.stderr
    assert init.stdout.strip() == f"initialised {installed}"
    assert verified.returncode == 1 and "archivist index --rebuild" in verified.stderr


def test_jobs_with_the_index_s_current_file_lost_move_nothing_and_say_to_rebuild(
    installed, tmp_path, make_record
):
    """Records moved into the store could not be indexed: refused before anything moves, in
    the line `verify` gives, whether there is anything to move or not."""
    index_dir = installed.parent / "data" / "index"
    (index_dir / "CURRENT").unlink()
    expected = (
        f"the index is missing (no index at {index_dir}: [Errno 2] No such file or directory: "
        f"'{index_dir / 'CURRENT'}'); `archivist index --rebuild` rebuilds it from the archive"
    )

    nothing = archivist("archive", "--as-of", "2027-06-01", "--config", str(installed))
    write_jsonl(tmp_path / "in.jsonl", [make_record(id=f"M{i}") for i in range(3)])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))
    some = archivist("archive", "--as-of", "2027-06-01", "--config", str(installed))
    verified = archivist("verify", "--config", str(installed))
    # the index's catch-up and an erasure need it too, and say so the same way
    catch_up = archivist("index", "--config", str(installed))
    erased = archivist("erase", "--customer", "C1", "--reason", "asked",
                       "--config", str(installed))

    for result in (nothing, some, catch_up, erased):
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr.splitlines() == [f"error: {expected}"]
    assert verified.returncode == 1 and expected in verified.stderr.splitlines()
    stats = json.loads(archivist("stats", "--config", str(installed)).stdout)
    assert (stats["active"], stats["archived"]) == (3, 0)
    with sqlite3.connect(installed.parent / "data" / "archive" / "catalog.db") as conn:
        assert conn.execute(
            "SELECT (SELECT count(*) FROM records) + (SELECT count(*) FROM history)"
        ).fetchone() == (0,)


def test_output_cut_off_by_its_reader_ends_quietly(installed):
    """`archivist ... | head -1`: the reader goes away; no error line about a broken pipe."""
    process = subprocess.Popen(
        [sys.executable, "-m", "archivist", "dispose", "--dry-run", "--config", str(installed)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    process.stdout.close()  # before it writes its first line
    with process.stderr:
        stderr = process.stderr.read().decode()
    assert process.wait(60) == 1
    assert stderr == ""


def test_archive_dry_run_says_why_a_restored_process_is_held_back(installed, tmp_path, make_record):
    """Restored, a process stays active for its restore grace: the dry run counts it held back,
    and says that is one of the reasons."""
    write_jsonl(tmp_path / "in.jsonl", [make_record(id="X", updated_at="2013-01-01T00:00:00Z")])
    archivist("import", str(tmp_path / "in.jsonl"), "--config", str(installed))
    archivist("archive", "--as-of", "2015-01-01", "--config", str(installed))
    restored = archivist("restore", "X", "--reason", "asked", "--config", str(installed))
    assert restored.returncode == 0, restored.stderr

    preview = archivist("archive", "--as-of", "2016-01-01", "--dry-run", "--config",
                        str(installed))

    assert preview.stdout.splitlines() == [
        "would archive 0",
        "held back 1 processes (a record not aged, in its restore grace, or on hold)",
    ]
