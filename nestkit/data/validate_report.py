"""Render a validation report: plain lines, JSON, JUnit XML or GitHub Actions annotations.

All formats carry the same findings in the same order (manifest order, then line). The table
format on a terminal is drawn by the CLI with rich; `as_lines` is its plain form for logs and pipes,
in the `file:line: severity: [category] reason` shape that editors and CI log parsers understand.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from collections import defaultdict

import orjson

from nestkit.data.validate import Report
from nestkit.data.validate_categories import ERROR, WARNING, Finding

FORMATS = ("table", "json", "junit", "github")


def display_path(path: str) -> str:
    """Relative to the working directory when below it (how CI annotations name repository files)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def where(finding: Finding) -> str:
    return (
        f"{display_path(finding.manifest)}:{finding.line}" if finding.line else display_path(finding.manifest)
    )


def summary_line(report: Report, strict: bool) -> str:
    summary = report.summary(strict)
    verdict = "FAILED" if summary["exit_code"] else "passed"
    counts = ", ".join(f"{name} {count}" for name, count in summary["categories"].items())
    mode = "decoded" if report.decoded else "headers only"
    rate = f"{summary['files_per_s']:g} files/s" if summary["files_per_s"] else "no files"
    return (
        f"validate-manifest {verdict}: {summary['errors']} error(s), {summary['warnings']} warning(s) in "
        f"{summary['lines']} line(s) and {summary['files']} file(s) "
        f"({mode}, {summary['elapsed_s']:.2f} s, {rate})"
        + (f"; by category: {counts}" if counts else "")
        + ("; --strict: warnings fail" if strict and summary["warnings"] and not summary["errors"] else "")
    )


def as_lines(report: Report, strict: bool) -> str:
    lines = [f"{where(f)}: {f.severity}: [{f.category}] {f.reason}" for f in report.findings]
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
        properties = [f"file={_escape_property(display_path(f.manifest))}"]
        if f.line:
            properties.append(f"line={f.line}")
        properties.append(f"title={_escape_property(f'validate-manifest {f.category}')}")
        lines.append(f"::{level} {','.join(properties)}::{_escape_data(f.reason)}")
    return "\n".join(lines + [summary_line(report, strict)]) + "\n"


def as_junit(report: Report, strict: bool) -> str:
    """One test suite per manifest; a test case per line with findings, plus one for the rest.

    Errors (and warnings under --strict) are <failure>s; other warnings are in the test case's
    <system-out>, so a CI test view shows them without failing.
    """
    by_manifest: dict[str, list[Finding]] = defaultdict(list)
    for f in report.findings:
        by_manifest[f.manifest].append(f)
    root = ET.Element("testsuites", name="nestkit validate-manifest", time=f"{report.elapsed_s:.3f}")
    total_tests = total_failures = 0
    for source in report.scan.sources:
        findings = by_manifest.pop(source.path, [])
        suite = ET.SubElement(root, "testsuite", name=display_path(source.path))
        by_line: dict[int, list[Finding]] = defaultdict(list)
        for f in findings:
            by_line[f.line].append(f)
        failures = 0
        for line, line_findings in by_line.items():
            paths = sorted({f.path for f in line_findings if f.path})
            name = f"line {line}" + (f": {paths[0]}" if paths else "") if line else "manifest"
            case = ET.SubElement(suite, "testcase", classname=display_path(source.path), name=name)
            failing = [f for f in line_findings if f.severity == ERROR or (strict and f.severity == WARNING)]
            for f in failing:
                failure = ET.SubElement(case, "failure", type=f.category, message=f.reason)
                failure.text = f"{f.severity}: [{f.category}] {f.reason}"
            passing = [f for f in line_findings if f not in failing]
            if passing:
                ET.SubElement(case, "system-out").text = "\n".join(
                    f"{f.severity}: [{f.category}] {f.reason}" for f in passing
                )
            failures += bool(failing)
        ET.SubElement(suite, "testcase", classname=display_path(source.path), name="all other lines")
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
