"""scripts/audit.py: which pip-audit findings fail the audit (a fixed version exists, not accepted),
which are only printed (no fixed version; accepted with a reason), and when nothing was audited."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
REPORT = Path(__file__).with_name("pip_audit_report.json")


def _load_script():
    spec = importlib.util.spec_from_file_location("audit", ROOT / "scripts" / "audit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


audit = _load_script()


@pytest.fixture
def report():
    return json.loads(REPORT.read_text(encoding="utf-8"))


def test_a_vulnerability_with_a_fixed_version_fails_and_one_without_is_only_listed(report):
    verdict = audit.judge(report, accepted={})
    assert sorted(f.id for f in verdict.fixable) == [
        "GHSA-53q9-r3pm-6pq6", "GHSA-7f5h-v6xp-fcq8", "GHSA-7gcm-g887-7qv7", "GHSA-887c-mr87-cxwp"]
    assert [(f.package, f.id) for f in verdict.unfixable] == [("torch", "GHSA-rrmf-rvhw-rf47")]
    assert verdict.exit_code == 1


def test_an_accepted_vulnerability_matches_by_alias_and_package_and_does_not_fail(report):
    verdict = audit.judge(report, accepted={("protobuf", "CVE-2026-0994"): "needs protobuf 5"})
    assert [(f.id, why) for f, why in verdict.accepted] == [("GHSA-7gcm-g887-7qv7", "needs protobuf 5")]
    assert "GHSA-7gcm-g887-7qv7" not in {f.id for f in verdict.fixable}
    other_package = audit.judge(report, accepted={("torch", "CVE-2026-0994"): "wrong package"})
    assert "GHSA-7gcm-g887-7qv7" in {f.id for f in other_package.fixable}


def test_only_unfixable_or_accepted_findings_pass(report):
    report["dependencies"] = [d for d in report["dependencies"] if d["name"] in ("protobuf", "numpy")]
    report["dependencies"].append({"name": "torch", "version": "2.13.0", "vulns": [
        {"id": "PYSEC-2099-1", "fix_versions": [], "aliases": []}]})
    verdict = audit.judge(report)  # the real ACCEPTED list covers protobuf's CVE-2026-0994
    assert verdict.fixable == [] and len(verdict.unfixable) == 1 and len(verdict.accepted) == 1
    assert verdict.exit_code == 0


def test_skipped_packages_are_counted_and_nothing_audited_is_its_own_exit_code(report):
    verdict = audit.judge(report)
    assert verdict.audited == 4 and verdict.skipped == [
        "recbole: Dependency not found on PyPI and could not be audited: recbole (1.2.1)"]
    unreachable = {"dependencies": [{"name": n, "skip_reason": "Dependency not found on PyPI"}
                                    for n in ("torch", "numpy")]}
    assert audit.judge(unreachable).exit_code == 2


def test_main_lists_each_fixable_finding_and_exits_1(capsys):
    assert audit.main(["--report", str(REPORT)]) == 1
    out = capsys.readouterr().out
    assert "torch 2.5.1: GHSA-53q9-r3pm-6pq6 (CVE-2025-32434), fixed in: 2.6.0" in out
    assert "starlette 0.41.3: GHSA-7f5h-v6xp-fcq8 (CVE-2025-62727), fixed in: 0.49.1" in out
    assert "torch 2.5.1: GHSA-rrmf-rvhw-rf47 (CVE-2025-3000), fixed in: no fixed version" in out
    assert "audit FAILED: 3 known vulnerabilities" in out  # protobuf's is accepted


def test_main_when_pip_audit_cannot_run_or_reach_the_service(monkeypatch, capsys):
    monkeypatch.setattr(audit, "run_pip_audit", lambda: None)
    assert audit.main([]) == 2
    assert audit.main(["--allow-unreachable"]) == 0
    assert "nothing was audited" in capsys.readouterr().out
