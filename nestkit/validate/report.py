"""Render a validation report: plain lines, JSON, JUnit XML or GitHub Actions annotations.

All formats carry the same findings in the same order (manifest order, then line). The table
format on a terminal is drawn by the CLI with rich; `as_lines` is its plain form for logs and pipes,
in the `file:line: severity: [category] reason` shape that editors and CI log parsers understand.
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from collections import defaultdict

import orjson

from nestkit.core.paths import short_path
from nestkit.validate.categories import ERROR, WARNING, Finding
from nestkit.validate.validator import Report

FORMATS = ("table", "json", "junit", "github")

# Characters that would break a one-line finding or an XML document: control characters (a path
# may hold a newline or a NUL), lone surrogates and the two non-characters XML forbids.
_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match) -> str:
    char = match.group()
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def printable(text: str) -> str:
    """`text` with every control character (tab aside) written as an escape: `\\n`, `\\x00`."""
    return _UNPRINTABLE.sub(_escape, text)


def where(finding: Finding) -> str:
    manifest = printable(short_path(finding.manifest))
    return f"{manifest}:{finding.line}" if finding.line else manifest


def summary_line(report: Report, strict: bool) -> str:
    summary = report.summary(strict)
    verdict = "FAILED" if summary["exit_code"] else "passed"
    counts = ", ".join(f"{name} {count}" for name, count in summary["categories"].items())
    mode = "decoded" if report.decoded else "headers only"
    unit = "files+members" if summary["shards"] else "files"
    rate = f"{summary['files_per_s']:g} {unit}/s" if summary["files_per_s"] else f"no {unit}"
    counted = f"{summary['lines']} line(s) and {summary['files']} file(s)"
    if summary["shards"]:
        counted = (
            f"{summary['lines']} line(s), {summary['files']} file(s), {summary['shards']} shard(s) "
            f"and {summary['members']} member(s)"
        )
    return (
        f"validate-manifest {verdict}: {summary['errors']} error(s), {summary['warnings']} warning(s) in "
        f"{counted} "
        f"({mode}, {summary['elapsed_s']:.2f} s, {rate})"
        + (f"; by category: {counts}" if counts else "")
        + ("; --strict: warnings fail" if strict and summary["warnings"] and not summary["errors"] else "")
    )


def as_lines(report: Report, strict: bool) -> str:
    lines = [f"{where(f)}: {f.severity}: [{f.category}] {printable(f.reason)}" for f in report.findings]
    return "\n".join(lines + [summary_line(report, strict)]) + "\n"


def as_json(report: Report, strict: bool) -> str:
    document = {
        "summary": report.summary(strict),
        "findings": [dataclasses.asdict(f) for f in report.findings],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def as_github(report: Report, strict: bool) -> str:
    """`::error file=...,line=...,title=...::reason` workflow commands, then the summary line."""
    lines = []
    for f in report.findings:
        level = "error" if f.severity == ERROR or strict else "warning"
        properties = [f"file={_escape_property(printable(short_path(f.manifest)))}"]
        if f.line:
            properties.append(f"line={f.line}")
        properties.append(f"title={_escape_property(f'validate-manifest {f.category}')}")
        lines.append(f"::{level} {','.join(properties)}::{_escape_data(printable(f.reason))}")
    return "\n".join(lines + [summary_line(report, strict)]) + "\n"


def as_junit(report: Report, strict: bool) -> str:
    """One test suite per manifest (and per shard with findings about it as a whole); a test case per
    line with findings, plus one for the rest.

    Errors (and warnings under --strict) are <failure>s; other warnings are in the test case's
    <system-out>, so a CI test view shows them without failing.
    """
    by_manifest: dict[str, list[Finding]] = defaultdict(list)
    for f in report.findings:
        by_manifest[f.manifest].append(f)
    root = ET.Element("testsuites", name="nestkit validate-manifest", time=f"{report.elapsed_s:.3f}")
    total_tests = total_failures = 0
    for manifest in report.manifests():
        findings = by_manifest.pop(manifest, [])
        suite_name = printable(short_path(manifest))
        suite = ET.SubElement(root, "testsuite", name=suite_name)
        by_line: dict[int, list[Finding]] = defaultdict(list)
        for f in findings:
            by_line[f.line].append(f)
        failures = 0
        for line, line_findings in by_line.items():
            paths = sorted({printable(f.path) for f in line_findings if f.path})
            name = f"line {line}" + (f": {paths[0]}" if paths else "") if line else "manifest"
            case = ET.SubElement(suite, "testcase", classname=suite_name, name=name)
            failing = [f for f in line_findings if f.severity == ERROR or (strict and f.severity == WARNING)]
            for f in failing:
                failure = ET.SubElement(case, "failure", type=f.category, message=printable(f.reason))
                failure.text = f"{f.severity}: [{f.category}] {printable(f.reason)}"
            passing = [f for f in line_findings if f not in failing]
            if passing:
                ET.SubElement(case, "system-out").text = "\n".join(
                    f"{f.severity}: [{f.category}] {printable(f.reason)}" for f in passing
                )
            failures += bool(failing)
        ET.SubElement(suite, "testcase", classname=suite_name, name="all other lines")
        tests = len(by_line) + 1
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        total_tests += tests
        total_failures += failures
    root.set("tests", str(total_tests))
    root.set("failures", str(total_failures))
    root.set("errors", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


RENDERERS = {"table": as_lines, "json": as_json, "junit": as_junit, "github": as_github}
