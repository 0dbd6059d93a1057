"""`tocsin replay` and `tocsin what-if` on recorded logs written here (no broker): the same
log gives the same incidents and hashes every time, an unchanged rule set gives an empty
difference, a stricter MIN_LIFT removes exactly the low-lift incident, damage and garbage
are told, and the command line refuses bad arguments with a usage line. The live
comparison (an export of a worker's run) is in tests/integration/test_determinism.py and
test_demo.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.integration.harness import T0_MS
from tocsin.cli import main
from tocsin.clients.replay import RecordedLog, Replay, ReplayError
from tocsin.clients.tlog import load_manifest, write_export
from tocsin.streams.worker.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples"
_spec = importlib.util.spec_from_file_location("noisy_search", EXAMPLE / "noisy_search.py")
assert _spec is not None and _spec.loader is not None
noisy_search = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(noisy_search)
noisy_log, records = noisy_search.noisy_log, noisy_search.records


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("log")
    write_export(out, records(noisy_log(), {0: [b"\xff garbage", b'{"service": 3}']}))
    return out


def cli(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_replay_finds_both_incidents_and_dead_letters_the_garbage(recorded: Path) -> None:
    out = cli("replay", str(recorded), "--json")
    families = [r["family"] for r in out["incidents"]]
    assert families == ["search:GET /:SRCH_500", "search:GET /:SRCH_500",
                        "checkout:payment.charge:PMT_502"]
    # The late search spike began at minute 40 and opened at lift 3, 2 min 25 s later.
    late = out["incidents"][1]
    assert (late["onset_ms"], late["time_to_detect_ms"]) == (T0_MS + 2_545_009, 145_009)
    assert out["counts"]["dead_letters"] == 2  # garbage bytes, a service that is a number
    assert out["counts"]["events"] == len(noisy_log()) + 2
    for r in out["incidents"]:
        assert r["report_hash"].startswith("sha256:") and r["pages"] == 1
        assert r["detected_ms"] >= r["onset_ms"]


def test_the_same_log_replays_to_the_same_bytes(recorded: Path) -> None:
    log = RecordedLog.open(recorded)
    first, second = Replay(Settings()).run(log), Replay(Settings()).run(log)
    assert [c.to_dict() for _, c in first.changes] == [c.to_dict() for _, c in second.changes]
    assert first.final == second.final and first.final
    assert [r["report_hash"] for r in first.reports] == \
        [r["report_hash"] for r in second.reports]


def test_what_if_with_no_real_change_is_an_empty_difference(recorded: Path) -> None:
    out = cli("what-if", str(recorded), "--set", "detector.min_lift=3.0", "--json")
    assert out["empty"] and out["unchanged"] == 3
    assert out["only_baseline"] == out["only_change"] == out["changed"] == []
    assert out["totals"]["baseline"] == out["totals"]["change"]


def test_raising_min_lift_removes_exactly_the_low_lift_incident(recorded: Path) -> None:
    early, late, checkout = cli("replay", str(recorded), "--json")["incidents"]
    out = cli("what-if", str(recorded), "--set", "detector.min_lift=4", "--json")
    assert out["only_baseline"] == [late]  # lift 3 < 4: it would not have opened
    assert out["only_change"] == []
    # The first search incident (no baseline: lift does not apply) still opens at the same
    # time; it re-arms below a higher lift now (1 + REARM x (MIN_LIFT - 1)), so it
    # recovers sooner. checkout is untouched: same id, same report hash.
    [changed] = out["changed"]
    assert changed["baseline"] == early
    assert {"onset_ms", "detected_ms", "cause", "rule"}.isdisjoint(changed["fields"])
    assert changed["change"]["resolved_ms"] < early["resolved_ms"]
    assert out["unchanged"] == 1
    assert out["totals"]["baseline"]["incidents"] == 3
    assert out["totals"]["change"] == {
        "incidents": 2, "pages": 2,
        "median_time_to_detect_ms": (early["time_to_detect_ms"]
                                     + checkout["time_to_detect_ms"]) / 2}


def test_what_if_prints_the_difference_as_text(recorded: Path) -> None:
    result = CliRunner().invoke(main, ["what-if", str(recorded), "--set",
                                       "detector.min_lift=4"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "only in the baseline" in result.stdout and "SRCH_500" in result.stdout
    assert "PMT_502" not in result.stdout.split("totals")[0]


def test_replay_writes_the_worker_tables(recorded: Path, tmp_path: Path) -> None:
    import duckdb

    db = tmp_path / "out.duckdb"
    out = cli("replay", str(recorded), "--db", str(db), "--json")
    con = duckdb.connect(str(db), read_only=True)
    try:
        incidents = con.execute("SELECT incident_id FROM incidents ORDER BY 1").fetchall()
        letters = con.execute("SELECT count(*) FROM dead_letters").fetchone()
        reports = con.execute("SELECT incident_id, arg_max(report_hash, written_seq) FROM "
                              "triage_reports GROUP BY 1 ORDER BY 1").fetchall()
    finally:
        con.close()
    assert [i for (i,) in incidents] == sorted(r["id"] for r in out["incidents"])
    assert letters == (2,)
    assert reports == sorted((r["id"], r["report_hash"]) for r in out["incidents"])


def test_a_damaged_file_is_refused_naming_it(recorded: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(recorded, copy)
    victim = next((copy / "tocsin.events").iterdir())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ReplayError, match=victim.name):
        RecordedLog.open(copy)
    result = CliRunner().invoke(main, ["replay", str(copy)])
    assert result.exit_code == 1 and "sha256" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--set", "detector.min_lift"], "expected KEY=VALUE"),
    (["--set", "detector.nope=1"], "unknown key 'detector.nope'"),
    (["--set", "detector.min_lift=0.5"], "min_lift"),
    (["--set", "detector.window_ms=45000"], "window"),
    (["--set", "triage.correlation_window_ms=-5"], "cannot be negative"),
    (["--set", "other.x=1"], "unknown key"),
])
def test_bad_settings_get_a_usage_line(recorded: Path, args: list[str], message: str
                                       ) -> None:
    for command in ("replay", "what-if"):
        result = CliRunner().invoke(main, [command, str(recorded), *args])
        assert result.exit_code == 2, result.output
        assert "Usage:" in result.stderr and message in result.stderr
        assert "Traceback" not in result.stderr


def test_a_directory_that_is_not_an_export_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["replay", str(tmp_path)])
    assert result.exit_code == 1 and "manifest" in result.stderr
    result = CliRunner().invoke(main, ["replay", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "not a directory" in result.stderr
    result = CliRunner().invoke(main, ["what-if", str(tmp_path)])
    assert result.exit_code == 2 and "--set" in result.stderr  # the change is required


def test_replay_refuses_to_overwrite_a_db(recorded: Path, tmp_path: Path) -> None:
    db = tmp_path / "there.duckdb"
    db.write_bytes(b"")
    result = CliRunner().invoke(main, ["replay", str(recorded), "--db", str(db)])
    assert result.exit_code == 2 and "exists" in result.stderr


def test_python_dash_m_tocsin_replay_runs(recorded: Path) -> None:
    done = subprocess.run([sys.executable, "-P", "-m", "tocsin", "replay", str(recorded)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "3 incidents" in done.stdout and "events/s" in done.stderr


NOISY_SEARCH = """version = 1

[[override]]            # search is noisy: open only at 4x its baseline
service = "search"
min_lift = 4
"""


def test_a_rules_file_for_the_noisy_service_removes_its_incident_and_no_other(
        recorded: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(NOISY_SEARCH)
    early, late, checkout = cli("replay", str(recorded), "--json")["incidents"]
    out = cli("what-if", str(recorded), "--rules", str(rules), "--json")
    assert out["only_baseline"] == [late] and out["only_change"] == []
    assert [c["baseline"]["id"] for c in out["changed"]] == [early["id"]]
    assert out["unchanged"] == 1  # checkout: its report's content is the same
    ruled = out["rules"]["change"]["hash"]
    assert ruled.startswith("sha256:") and out["rules"]["baseline"]["hash"] is None
    # Replayed under the file, every change and report says so; checkout's report differs
    # from the baseline's only by that stamp.
    under = cli("replay", str(recorded), "--rules", str(rules), "--json")
    assert {r["rules_hash"] for r in under["incidents"]} == {ruled}
    again = {r["family"]: r for r in under["incidents"]}["checkout:payment.charge:PMT_502"]
    assert again["report_hash"] != checkout["report_hash"]
    assert again["report_content_hash"] == checkout["report_content_hash"]
    assert again["id"] == checkout["id"]


def test_a_rules_file_with_a_mistake_is_refused_naming_its_line(recorded: Path,
                                                                tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(NOISY_SEARCH.replace("min_lift = 4", "min_lift = 0.5"))
    for command in (["replay", str(recorded)], ["what-if", str(recorded)]):
        result = CliRunner().invoke(main, [*command, "--rules", str(rules)])
        assert result.exit_code == 2 and "rules.toml:5" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    result = CliRunner().invoke(main, ["replay", str(recorded), "--rules",
                                       str(tmp_path / "missing.toml")])
    assert result.exit_code == 2 and "missing.toml" in result.stderr


def test_the_readme_example_log_is_what_its_script_writes(tmp_path: Path) -> None:
    """examples/noisy-search/ (README's what-if example) is exactly the script's output."""
    noisy_search.write(tmp_path / "again")
    committed, again = load_manifest(EXAMPLE / "noisy-search"), load_manifest(tmp_path / "again")
    assert [(f["path"], f["sha256"], f["count"]) for f in committed["files"]] == \
        [(f["path"], f["sha256"], f["count"]) for f in again["files"]]
    out = cli("what-if", str(EXAMPLE / "noisy-search"), "--rules",
              str(EXAMPLE / "rules" / "noisy-search.toml"), "--json")
    assert [r["family"] for r in out["only_baseline"]] == ["search:GET /:SRCH_500"]
    assert out["unchanged"] == 1 and out["only_change"] == []


def test_a_db_that_cannot_be_written_is_an_error_not_a_traceback(recorded: Path) -> None:
    result = CliRunner().invoke(main, ["replay", str(recorded), "--db",
                                       "/dev/null/inside.duckdb"])
    assert result.exit_code == 1 and "cannot write" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_report_made_under_rules_says_so_in_its_renderings(recorded: Path) -> None:
    from tocsin.processors.render import markdown
    from tocsin.processors.render_text import text
    from tocsin.processors.rules import load_rules

    rules = load_rules(NOISY_SEARCH, "rules.toml", base=Settings().detector)
    out = Replay(Settings(), rules).run(RecordedLog.open(recorded))
    report = next(iter(out.final.values()))
    assert report["incident"]["rules_hash"] == rules.hash
    assert f"rules `{rules.hash}`" in markdown(report)
    assert rules.hash in text(report).split("rules", 1)[1]
    plain = next(iter(Replay(Settings()).run(RecordedLog.open(recorded)).final.values()))
    assert "rules_hash" not in plain["incident"] and "rules `" not in markdown(plain)
