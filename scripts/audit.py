"""Dependency audit: pip-audit on this virtualenv; fail on a known vulnerability that has a fix.

    .venv/bin/python scripts/audit.py                      # what `make audit` runs
    .venv/bin/python scripts/audit.py --allow-unreachable  # what CI runs (.ci/run)
    .venv/bin/python scripts/audit.py --report FILE        # judge a saved `pip-audit -f json`

The venv is audited, not requirements.txt alone: scripts/setup.sh builds it from the pins, and it
also holds what the pins bring in (starlette comes with fastapi) and the venv's own pip and
setuptools. pip-audit asks PyPI's vulnerability service about each installed version.

Policy (exit status):

- 1: a vulnerability with a fixed version, not accepted below. Each is listed (package, version,
  id, aliases, fixed in): move the pin in requirements.txt past it.
- 0: none. Vulnerabilities without a fixed version, and accepted ones, are printed, not failed.
- 2: nothing could be audited (the service did not answer for any package, or pip-audit did not
  run); ``--allow-unreachable`` turns this into a warning and 0.

ACCEPTED holds the vulnerabilities that have a fix we cannot take yet, each with the reason; an
entry applies to one package and matches the vulnerability's id or any of its aliases.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ACCEPTED: dict[tuple[str, str], str] = {
    ("protobuf", "CVE-2026-0994"): (
        "fixed only in protobuf 5.29.6+, and nvidia-pytriton 0.7.0 and tritonclient 2.51.0 need "
        "protobuf<5; json_format.ParseDict (the vulnerable path) never sees untrusted input here"
    ),
}


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]

    def line(self) -> str:
        aliases = f" ({', '.join(self.aliases)})" if self.aliases else ""
        fixed = ", ".join(self.fix_versions) or "no fixed version"
        return f"{self.package} {self.version}: {self.id}{aliases}, fixed in: {fixed}"


@dataclass
class Verdict:
    fixable: list[Finding] = field(default_factory=list)
    unfixable: list[Finding] = field(default_factory=list)
    accepted: list[tuple[Finding, str]] = field(default_factory=list)
    audited: int = 0
    skipped: list[str] = field(default_factory=list)  # "name: why"

    @property
    def exit_code(self) -> int:
        if self.fixable:
            return 1
        return 0 if self.audited else 2


def acceptance(finding: Finding, accepted: dict[tuple[str, str], str] = ACCEPTED) -> str | None:
    for vuln_id in (finding.id, *finding.aliases):
        reason = accepted.get((finding.package, vuln_id))
        if reason:
            return reason
    return None


def judge(report: dict, accepted: dict[tuple[str, str], str] = ACCEPTED) -> Verdict:
    """Sort a `pip-audit --format json` report into fixable / unfixable / accepted findings."""
    verdict = Verdict()
    for dep in report.get("dependencies", []):
        if "skip_reason" in dep:
            verdict.skipped.append(f"{dep['name']}: {dep['skip_reason']}")
            continue
        verdict.audited += 1
        for vuln in dep.get("vulns", []):
            finding = Finding(dep["name"].lower(), dep["version"], vuln["id"],
                              tuple(vuln.get("aliases") or ()), tuple(vuln.get("fix_versions") or ()))
            reason = acceptance(finding, accepted)
            if not finding.fix_versions:
                verdict.unfixable.append(finding)
            elif reason:
                verdict.accepted.append((finding, reason))
            else:
                verdict.fixable.append(finding)
    return verdict


def run_pip_audit() -> dict | None:
    """pip-audit on the interpreter's own environment (the venv), as JSON; None if it failed."""
    cmd = [sys.executable, "-m", "pip_audit", "--format", "json", "--aliases", "on",
           "--desc", "off", "--progress-spinner", "off"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        sys.stderr.write((result.stderr.strip() or f"pip-audit exited {result.returncode}") + "\n")
        return None


def render(verdict: Verdict, allow_unreachable: bool) -> str:
    lines = [f"audit: {verdict.audited} packages audited, {len(verdict.skipped)} not audited"]
    for title, findings in (("FIXABLE (fails the audit)", verdict.fixable),
                            ("no fixed version yet (not failing)", verdict.unfixable)):
        if findings:
            lines.append(f"{title}:")
            lines += [f"  {f.line()}" for f in findings]
    if verdict.accepted:
        lines.append("accepted (scripts/audit.py ACCEPTED):")
        lines += [f"  {f.line()}\n    why: {reason}" for f, reason in verdict.accepted]
    if not verdict.audited:
        lines.append("WARNING: nothing was audited: the vulnerability service did not answer for any "
                     "package" + (" (allowed by --allow-unreachable)" if allow_unreachable else ""))
        lines += [f"  e.g. {why}" for why in verdict.skipped[:3]]
    elif verdict.skipped:
        lines.append("not audited: " + "; ".join(verdict.skipped))
    if verdict.fixable:
        lines.append(f"audit FAILED: {len(verdict.fixable)} known vulnerabilities with a fix: move "
                     "the pins in requirements.txt past them")
    elif verdict.audited:
        lines.append("audit passed: no known vulnerability with a fix")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="judge this saved pip-audit JSON report")
    parser.add_argument("--allow-unreachable", action="store_true",
                        help="exit 0 (with a warning) when nothing could be audited")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text()) if args.report else run_pip_audit()
    verdict = judge(report) if report is not None else Verdict()
    sys.stdout.write(render(verdict, args.allow_unreachable) + "\n")
    if verdict.exit_code == 2 and args.allow_unreachable:
        return 0
    return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
