"""Data validation of the ingest step: Great Expectations suites over every EGD-CXR table.

:func:`validate_egd` runs one suite per file (built in :mod:`components.ingest_suites`) in an
in-memory GX context and returns a :class:`ValidationReport`: one :class:`CheckResult` per
expectation, naming the file, the column(s) and up to five record numbers of the failing rows.
Only checks of severity "error" decide success; "warning" checks are reported (in their own
sections of the JSON and HTML reports, with counts and examples) and never fail the step.

Policy for samples flagged invalid: the validity flags (FPOGV, BPOGV, LPV, RPV, LPMMV, RPMMV) must
be 0 or 1, and rows flagged 0 are kept. Samples off screen (FPOG/BPOG outside [0, 1]) or outside
the image (the released negative X/Y_ORIGINAL) are warnings, counted per image, and an error only
for an image past ``data.validation``; the heatmap step drops them and logs how many. Missing
coordinates (NaN in FPOGX/FPOGY or X/Y_ORIGINAL) are errors.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.ingest_suites import Severity, SuiteSpec, build_suites
from model_lib.config import PhiPolicy, ValidationConfig
from model_lib.data.egd_cxr import EgdTables

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5
MAX_FAILURES_SHOWN = 20
# In GX 1.24 SUMMARY already returns partial_unexpected_index_list: the DataFrame index labels,
# here record numbers. COMPLETE would also list every unexpected row, costly on 1.5M rows.
_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES}
_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list")
_HIDDEN_KWARGS = ("batch_id", "ignore_row_if", "column_set", *_COLUMN_KWARGS)
_LONG_SET = 10


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one expectation on one file.

    ``records`` are the index labels of failing rows (1-based record numbers for the EGD files);
    ``examples`` their values, or the values of the illustrating source columns for derived
    checks. ``observed`` holds the observed value of table- and aggregate-level expectations, or
    the error message when GX could not evaluate the expectation. ``unit`` names what the suite's
    rows are ("rows" of a file, or "images" for the per-image suites).
    """

    suite: str
    expectation: str
    columns: tuple[str, ...]
    severity: Severity
    success: bool
    unexpected_count: int | None = None
    element_count: int | None = None
    examples: tuple[Any, ...] = ()
    records: tuple[int, ...] = ()
    rule: str = ""
    observed: Any = None
    parameters: dict[str, Any] = field(default_factory=dict)
    unit: str = "rows"

    def line(self) -> str:
        """One readable line: file, expectation(columns), what was found, the rule."""
        head = f"{self.suite}: {self.expectation}({', '.join(self.columns)})"
        if self.unexpected_count is not None:
            text = (
                f"{head}: {self.unexpected_count:,} of {self.element_count or 0:,} {self.unit} "
                "unexpected"
            )
            if self.examples:
                text += f", e.g. {list(self.examples)!r}"
            if len(self.records) == 1:  # worded like DataError: "record 17"
                text += f", record {self.records[0]}"
            elif self.records:
                text += f", records {list(self.records)!r}"
        elif isinstance(self.observed, str) and self.observed.startswith("not evaluated"):
            text = f"{head}: {self.observed}"
        else:
            text = f"{head}: observed {self.observed!r}"
        if self.parameters:
            text += f" [{', '.join(f'{k}={v!r}' for k, v in self.parameters.items())}]"
        return f"{text} -- {self.rule}" if self.rule else text


@dataclass(frozen=True)
class ValidationReport:
    """Every check of one release; ``success`` is False when any error-severity check failed.

    ``statistics`` maps each suite to GX's counts (evaluated, successful, unsuccessful
    expectations, success percent) plus the number of rows validated.
    """

    success: bool
    checks: list[CheckResult]
    statistics: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success and c.severity == "error"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success and c.severity == "warning"]

    def headline(self) -> str:
        passed = sum(c.success for c in self.checks)
        verdict = "passed" if self.success else "FAILED"
        return (
            f"EGD-CXR validation {verdict}: {len(self.failures)} error(s), "
            f"{len(self.warnings)} warning(s), {passed:,} of {len(self.checks):,} checks "
            f"passed in {len(self.statistics)} suites"
        )

    def summary(self) -> str:
        """The headline, then one line per failed error check and one per warning."""
        lines = [self.headline()]
        if self.failures:
            lines += ["Errors:", *(f"  {c.line()}" for c in self.failures)]
        if self.warnings:
            lines += ["Warnings (do not fail the step):", *(f"  {c.line()}" for c in self.warnings)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the verdict, the failed errors and the warnings (each with its line), and
        per suite GX statistics and every check."""
        suites = {
            name: {
                "statistics": stats,
                "checks": [asdict(c) for c in self.checks if c.suite == name],
            }
            for name, stats in self.statistics.items()
        }
        return _jsonable({
            "success": self.success,
            "headline": self.headline(),
            "errors": [{"line": c.line(), **asdict(c)} for c in self.failures],
            "warnings": [{"line": c.line(), **asdict(c)} for c in self.warnings],
            "suites": suites,
        })  # fmt: skip

    def to_json(self, path: str | Path) -> None:
        _write_atomic(Path(path), self._json_text())

    def to_html(self, path: str | Path) -> None:
        _write_atomic(Path(path), self._html_text())

    def write(self, json_path: str | Path, html_path: str | Path) -> None:
        """Write both reports; each appears whole or not at all (temp file, then rename)."""
        texts = {Path(json_path): self._json_text(), Path(html_path): self._html_text()}
        for path, text in texts.items():
            _write_atomic(path, text)

    def _json_text(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def _html_text(self) -> str:
        return _render_html(self)


class ValidationFailed(ValueError):
    """A release failed its error-severity checks; the message lists them and names the report."""

    def __init__(self, report: ValidationReport, report_path: str | Path | None = None) -> None:
        self.report = report
        self.report_path = None if report_path is None else Path(report_path)
        lines = [report.headline(), *(c.line() for c in report.failures[:MAX_FAILURES_SHOWN])]
        if len(report.failures) > MAX_FAILURES_SHOWN:
            lines.append(f"... and {len(report.failures) - MAX_FAILURES_SHOWN} more")
        if self.report_path is not None:
            lines.append(f"full report: {self.report_path}")
        super().__init__("\n".join(lines))


def validate_egd(
    tables: EgdTables,
    headers: pd.DataFrame,
    *,
    expected_images: int | None = None,
    limits: ValidationConfig | None = None,
    identifying: pd.DataFrame | None = None,
    phi_policy: PhiPolicy = "fail",
) -> ValidationReport:
    """Validate one EGD-CXR release with Great Expectations.

    tables: as read by ``model_lib.data.egd_cxr.load_egd_cxr`` (indexed by record number).
    headers: one row per image with ``packing.HEADER_TABLE_COLUMNS``, as ``read_image_headers``
        returns it (indexed like the master sheet; JPG images fill only dicom_id, Rows and
        Columns). Its index labels name the records of the "DICOM headers" suite.
    expected_images: the release's image count (1,083 for PhysioNet egd-cxr 1.0.0), if known.
    limits: ``data.validation``: the per-image fractions of off-screen and off-image samples
        past which an image fails (below them they are warnings); None means the defaults.
    identifying: per image, the identifying DICOM fields it fills (names only), as
        ``read_image_headers`` returns them; checked under ``phi_policy`` ("fail": errors,
        "strip": warnings). None skips the check (hand-built headers without files).
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    specs = build_suites(
        tables,
        headers,
        expected_images=expected_images,
        limits=ValidationConfig() if limits is None else limits,
        identifying=identifying,
        phi_policy=phi_policy,
    )
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name="egd_cxr")
    checks: list[CheckResult] = []
    statistics: dict[str, dict[str, float]] = {}
    for k, spec in enumerate(specs):
        started = time.perf_counter()
        key = f"suite_{k}"
        batch = source.add_dataframe_asset(name=key).add_batch_definition_whole_dataframe(key)
        suite = context.suites.add(gx.ExpectationSuite(name=key, expectations=spec.expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=key, data=batch, suite=suite)
        )
        result = definition.run(
            batch_parameters={"dataframe": spec.frame}, result_format=_RESULT_FORMAT
        )
        ordered = sorted(result.results, key=lambda r: r.expectation_config.meta["order"])
        suite_checks = [_check_result(spec, r) for r in ordered]
        checks += suite_checks
        statistics[spec.name] = {**result.statistics, "rows": len(spec.frame)}
        log.info(
            "validated %s: %d rows, %d of %d checks passed (%.2f s)",
            spec.name,
            len(spec.frame),
            sum(c.success for c in suite_checks),
            len(suite_checks),
            time.perf_counter() - started,
        )
    success = all(c.success for c in checks if c.severity == "error")
    return ValidationReport(success=success, checks=checks, statistics=statistics)


def _check_result(spec: SuiteSpec, result: Any) -> CheckResult:
    """One GX ExpectationValidationResult as a CheckResult."""
    config = result.expectation_config
    meta, kwargs, found = config.meta, config.kwargs, result.result or {}
    columns: list[str] = []
    # A table expectation's column list is what it expects, not the columns it looks at.
    for key in () if config.type.startswith("expect_table_") else _COLUMN_KWARGS:
        value = kwargs.get(key)
        columns += value if isinstance(value, list) else [value] if value else []
    records = tuple(_plain(r) for r in found.get("partial_unexpected_index_list") or ())
    records = records[:MAX_EXAMPLES]
    examples = tuple(_plain(v) for v in found.get("partial_unexpected_list") or ())
    if meta.get("show") and records and spec.frame.index.is_unique:
        shown = spec.frame.loc[list(records), meta["show"]]
        examples = tuple(_plain(row) for row in shown.to_dict(orient="records"))
    observed = found.get("details", {}).get("mismatched", found.get("observed_value"))
    error = _exception_message(result.exception_info)
    if error is not None:
        observed = f"not evaluated: {error}"
    return CheckResult(
        suite=spec.name,
        expectation=config.type,
        columns=tuple(columns),
        severity=meta.get("severity", "error"),
        success=bool(result.success),
        unexpected_count=_plain(found.get("unexpected_count")),
        element_count=_plain(found.get("element_count")),
        examples=examples[:MAX_EXAMPLES],
        records=records,
        rule=meta.get("rule", ""),
        observed=_plain(observed),
        unit=meta.get("unit", "rows"),
        parameters={
            k: _short(v) for k, v in kwargs.items() if k not in _HIDDEN_KWARGS and v is not None
        },
    )


def _exception_message(info: Mapping[str, Any] | None) -> str | None:
    """GX reports errors either flat or keyed by metric; return the first message."""
    if not info:
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info["raised_exception"] else None
    for nested in info.values():
        message = _exception_message(nested) if isinstance(nested, Mapping) else None
        if message is not None:
            return message
    return None


def _short(value: Any) -> Any:
    """Parameters as shown: long value sets (every master id) become their size."""
    if isinstance(value, list | tuple) and len(value) > _LONG_SET:
        return f"<{len(value):,} values>"
    return _plain(value)


def _plain(value: Any) -> Any:
    """numpy and pandas scalars to Python ones, recursively; NaN stays a float."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _jsonable(value: Any) -> Any:
    """Strict JSON values: NaN and infinities become null, tuples lists, the rest strings."""
    value = _plain(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temp file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; }
tr.pass td:first-child { background: #d9f2d9; }
tr.fail td:first-child { background: #f7caca; }
tr.warning td:first-child { background: #fbe7b5; }
tr.error td { background: #fbe3e3; }
tr.warn td { background: #fdf3da; }
"""
_HTML_COLUMNS = ("result", "severity", "expectation", "columns", "unexpected", "examples",
                 "records", "observed / parameters", "rule")  # fmt: skip
_FINDING_COLUMNS = ("suite", "expectation", "columns", "unexpected", "examples", "records",
                    "observed / parameters", "rule")  # fmt: skip


def _render_html(report: ValidationReport) -> str:
    """A small self-contained page: the headline, the failed errors and the warnings in their own
    sections (counts, examples), then every check in a table per suite; all text escaped."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>EGD-CXR validation</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report.headline())}</h1>",
    ]
    sections = (("errors", "Errors", "fail the step", "error", report.failures),
                ("warnings", "Warnings", "reported, do not fail the step", "warn",
                 report.warnings))  # fmt: skip
    for anchor, title, meaning, css, found in sections:
        parts += [f'<h2 id="{anchor}">{title}: {len(found)} ({meaning})</h2>']
        if not found:
            parts.append("<p>none</p>")
            continue
        parts += ["<table>", _html_row("th", _FINDING_COLUMNS)]
        parts += [_html_row("td", (c.suite, *_check_cells(c)[1:]), css) for c in found]
        parts.append("</table>")
    parts.append("<h2>All checks, by file</h2>")
    for name, stats in report.statistics.items():
        counts = ", ".join(f"{k}: {v:g}" if isinstance(v, int | float) else f"{k}: {v}"
                           for k, v in stats.items())  # fmt: skip
        parts += [f"<h3>{html.escape(name)}</h3>", f"<p>{html.escape(counts)}</p>", "<table>",
                  _html_row("th", _HTML_COLUMNS)]  # fmt: skip
        for check in (c for c in report.checks if c.suite == name):
            status = "pass" if check.success else "fail" if check.severity == "error" else "warning"
            parts.append(_html_row("td", (status.upper(), *_check_cells(check)), status))
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _check_cells(check: CheckResult) -> tuple[str, ...]:
    """severity, expectation, columns, unexpected, examples, records, observed, rule."""
    unexpected, rows = check.unexpected_count, check.element_count or 0
    detail = "" if check.observed is None else f"observed {check.observed!r} "
    return (
        check.severity,
        check.expectation,
        ", ".join(check.columns),
        "" if unexpected is None else f"{unexpected:,} of {rows:,} {check.unit}",
        repr(list(check.examples)) if check.examples else "",
        ", ".join(str(r) for r in check.records),
        detail + " ".join(f"{k}={v!r}" for k, v in check.parameters.items()),
        check.rule,
    )


def _html_row(tag: str, cells: tuple[str, ...], css_class: str = "") -> str:
    opening = f'<tr class="{css_class}">' if css_class else "<tr>"
    return opening + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"
