"""Supply-chain gates: bandit finds nothing of medium severity or above in the shipped code, no
secret beyond the audited baseline, torch.load only with weights_only=True, exact lock pins.

bandit and detect-secrets live in .venv-tools (requirements-tools.lock); `make setup` builds it.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".venv-tools" / "bin"
BANDIT = TOOLS / "bandit"
DS_HOOK = TOOLS / "detect-secrets-hook"
BASELINE = ROOT / ".secrets.baseline"
# The shipped packages plus the benchmarks (they run on the GPU machines). tests/ is left out:
# it asserts on literal paths such as /dev/shm and opens URLs of servers it started itself;
# silencing those would add noise, not safety. The torch.load and secrets checks cover tests/.
SCANNED = ("model_lib", "components", "pipelines", "bench")
BLOCKING = {"MEDIUM", "HIGH"}
LOCKS = {"requirements.in": "requirements.lock", "requirements-tools.in": "requirements-tools.lock"}
TORCH_LOADS = {"torch.load", "torch.serialization.load"}
# `# nosec B108, B603  # why` or `# nosec B603 - why`: ids plus a reason; a bare nosec hides all.
NOSEC = re.compile(r"#\s*nosec\b")
JUSTIFIED_NOSEC = re.compile(r"#\s*nosec\s+B\d{3}(?:\s*,\s*B\d{3})*[\s#:-]+\w")
PIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?==[A-Za-z0-9][A-Za-z0-9.+!_-]*")

needs_bandit = pytest.mark.skipif(
    not BANDIT.exists(), reason="no .venv-tools/bin/bandit (`make setup` installs it)"
)
needs_detect_secrets = pytest.mark.skipif(
    not DS_HOOK.exists(), reason="no .venv-tools/bin/detect-secrets-hook (`make setup` installs it)"
)


def repo_files() -> list[str]:
    """Files git tracks or would add (untracked, not ignored), relative to the repo root."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(p for p in set(out.split("\0")) if p and (ROOT / p).is_file())


# -- bandit -----------------------------------------------------------------------------------


def bandit_findings(*targets: Path | str) -> list[dict]:
    """bandit's issues of medium or high severity (any confidence) under ``targets``."""
    result = subprocess.run(
        [str(BANDIT), "-r", "-q", "-f", "json", *map(str, targets)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode not in (0, 1):
        pytest.fail(f"bandit exited {result.returncode}:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout)
    assert not report["errors"], f"bandit could not read: {report['errors']}"
    return [issue for issue in report["results"] if issue["issue_severity"] in BLOCKING]


def describe(issues: list[dict]) -> str:
    return "\n".join(
        f"{i['filename']}:{i['line_number']} {i['test_id']} {i['issue_severity']}: "
        f"{i['issue_text']}"
        for i in issues
    )


@needs_bandit
def test_bandit_finds_nothing_of_medium_severity_or_above() -> None:
    issues = bandit_findings(*SCANNED)
    msg = "fix these, or mark a false positive `# nosec BXXX  # why`:\n"
    assert not issues, msg + describe(issues)


@needs_bandit
def test_bandit_reports_shell_and_unsafe_yaml(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(
        "import subprocess\nimport yaml\n\n\ndef run(cmd, text):\n"
        "    subprocess.call(cmd, shell=True)\n    return yaml.load(text)\n",
        encoding="utf-8",
    )
    assert {"B602", "B506"} <= {i["test_id"] for i in bandit_findings(tmp_path)}


def unjustified_nosecs(path: Path) -> list[str]:
    with path.open("rb") as fh:
        comments = [t for t in tokenize.tokenize(fh.readline) if t.type == tokenize.COMMENT]
    return [
        f"{path}:{t.start[0]}: {t.string}"
        for t in comments
        if NOSEC.search(t.string) and not JUSTIFIED_NOSEC.search(t.string)
    ]


def test_every_nosec_names_its_check_and_a_reason() -> None:
    found = [
        bad for pkg in SCANNED for p in (ROOT / pkg).rglob("*.py") for bad in unjustified_nosecs(p)
    ]
    assert not found, "\n".join(found)


def test_bare_or_unexplained_nosec_is_caught(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "a = 1  # nosec\nb = 2  # nosec B108\n"
        "c = 3  # nosec B108  # the pod's memory volume\nd = 4  # nosec B603 - fixed args\n",
        encoding="utf-8",
    )
    assert [line.split(":")[1] for line in unjustified_nosecs(module)] == ["1", "2"]


# -- detect-secrets ---------------------------------------------------------------------------


def new_secrets(files: list[str], baseline: dict, tmp_path: Path) -> dict[str, list[dict]]:
    """Secrets in ``files`` (relative to the repo root, or absolute) that ``baseline`` lacks.

    The hook rewrites the baseline it is given when line numbers move, so it gets a copy.
    """
    copy = tmp_path / "secrets.baseline"
    copy.write_text(json.dumps(baseline), encoding="utf-8")
    result = subprocess.run(
        [str(DS_HOOK), "--json", "--baseline", str(copy), *files],
        cwd=ROOT,  # the hook asks git whether the baseline is staged
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    # 0: nothing new; 3: nothing new, only line numbers moved (in the copy); 1: new secrets.
    if result.returncode in (0, 3):
        return {}
    try:
        return json.loads(result.stdout)["results"]
    except (json.JSONDecodeError, KeyError):
        pytest.fail(f"detect-secrets-hook exited {result.returncode}:\n{result.stderr[-3000:]}")


def unaudited(baseline: dict) -> list[str]:
    """Baseline entries not audited as false positives (``is_secret: false``)."""
    return [
        f"{s['filename']}:{s['line_number']} {s['type']}"
        for entries in baseline["results"].values()
        for s in entries
        if s.get("is_secret") is not False
    ]


def load_baseline() -> dict:
    return json.loads(BASELINE.read_text(encoding="utf-8"))


@pytest.mark.slow
@needs_detect_secrets
def test_no_secret_beyond_the_audited_baseline(tmp_path: Path) -> None:
    files = [f for f in repo_files() if f != BASELINE.name]
    found = new_secrets(files, load_baseline(), tmp_path)
    assert not found, (
        "new potential secrets (remove them, or audit and add them to .secrets.baseline):\n"
        + "\n".join(f"{f}:{s['line_number']} {s['type']}" for f, e in found.items() for s in e)
    )


def test_the_baseline_holds_only_audited_false_positives() -> None:
    baseline = load_baseline()
    assert baseline["results"], "an empty baseline would not show that the audit happened"
    assert not unaudited(baseline), unaudited(baseline)


def test_an_unaudited_or_confirmed_entry_is_caught() -> None:
    entry = {"type": "Secret Keyword", "hashed_secret": "0" * 40, "line_number": 1}
    baseline = {
        "results": {
            "a.py": [{**entry, "filename": "a.py"}],
            "b.py": [{**entry, "filename": "b.py", "is_secret": True}],
            "c.py": [{**entry, "filename": "c.py", "is_secret": False}],
        }
    }
    assert [line.split(":")[0] for line in unaudited(baseline)] == ["a.py", "b.py"]


@needs_detect_secrets
def test_detect_secrets_reports_a_planted_key_and_the_known_false_positives(tmp_path: Path) -> None:
    leak = tmp_path / "settings.py"
    leak.write_text(f'KEY_ID = "{"AKIA" + "IOSFODNN7EXAMPLE"}"\n', encoding="utf-8")
    baseline = load_baseline()
    found = new_secrets([str(leak)], baseline, tmp_path)
    assert [s["type"] for s in found[str(leak)]] == ["AWS Access Key"]
    # The repo's known false positives (moto's dummy keys) are only let through by the baseline.
    emptied = {**baseline, "results": {}}
    assert "tests/conftest.py" in new_secrets(["tests/conftest.py"], emptied, tmp_path)


# -- torch.load -------------------------------------------------------------------------------


def dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (head := dotted(node.value)):
        return f"{head}.{node.attr}"
    return None


def torch_loads(source: str, filename: str = "<src>") -> list[tuple[int, bool]]:
    """(line, passes ``weights_only=True`` literally) for each torch.load call, aliases included."""
    tree = ast.parse(source, filename=filename)
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not (name := dotted(node.func)):
            continue
        head, _, rest = name.partition(".")
        resolved = ".".join(filter(None, (names.get(head, head), rest)))
        if resolved in TORCH_LOADS:
            safe = any(
                k.arg == "weights_only"
                and isinstance(k.value, ast.Constant)
                and k.value.value is True
                for k in node.keywords
            )
            calls.append((node.lineno, safe))
    return calls


def test_every_torch_load_passes_weights_only_true() -> None:
    calls = {
        path: torch_loads((ROOT / path).read_text(encoding="utf-8"), path)
        for path in repo_files()
        if path.endswith(".py")
    }
    unsafe = [f"{path}:{line}" for path, found in calls.items() for line, ok in found if not ok]
    msg = "torch.load without weights_only=True (it would unpickle arbitrary code):\n"
    assert not unsafe, msg + "\n".join(unsafe)
    # The checkpoint, weights and model-package readers are all seen.
    assert sum(map(len, calls.values())) >= 4


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import torch\ntorch.load(p, weights_only=True)\n", [(2, True)]),
        ("import torch\ntorch.load(p)\n", [(2, False)]),
        ("import torch\ntorch.load(p, weights_only=False)\n", [(2, False)]),
        ("import torch\ntorch.load(p, **kw)\n", [(2, False)]),
        ("import torch as th\nth.load(p)\n", [(2, False)]),
        ("from torch import load as tl\ntl(p)\n", [(2, False)]),
        ("from torch import serialization\nserialization.load(p)\n", [(2, False)]),
        ("import pickle\npickle.load(f)\nnp.load(p)\n", []),
    ],
)
def test_torch_load_scan_cases(source: str, expected: list[tuple[int, bool]]) -> None:
    assert torch_loads(source) == expected


# -- lock files -------------------------------------------------------------------------------


def requirement_lines(text: str) -> list[tuple[int, str]]:
    lines = ((n, raw.strip()) for n, raw in enumerate(text.splitlines(), 1))
    return [(n, line) for n, line in lines if line and not line.startswith("#")]


def loose_pins(text: str) -> list[str]:
    """Lines that are not an exact ``name==version`` pin (ranges, URLs, options, bare names)."""
    return [f"line {n}: {line}" for n, line in requirement_lines(text) if not PIN.fullmatch(line)]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def unlocked(requirements: str, lock: str) -> set[str]:
    """Top-level requirement names that the lock does not pin."""
    wanted = {
        canonical(re.split(r"[\[<>=!~;@\s]", line)[0])
        for _, line in requirement_lines(requirements)
    }
    pinned = {canonical(line.split("==")[0]) for _, line in requirement_lines(lock)}
    return wanted - pinned


@pytest.mark.parametrize("lock", sorted(LOCKS.values()))
def test_lock_holds_only_exact_pins(lock: str) -> None:
    loose = loose_pins((ROOT / lock).read_text(encoding="utf-8"))
    assert not loose, f"{lock}: not an exact pin:\n" + "\n".join(loose)


@pytest.mark.parametrize(("requirements", "lock"), sorted(LOCKS.items()))
def test_lock_pins_every_top_level_requirement(requirements: str, lock: str) -> None:
    missing = unlocked(
        (ROOT / requirements).read_text(encoding="utf-8"), (ROOT / lock).read_text(encoding="utf-8")
    )
    assert not missing, (
        f"{lock} lacks {sorted(missing)}: regenerate it (make lock / make lock-tools)"
    )


def test_loose_pins_and_missing_requirements_are_caught() -> None:
    lock = (
        "# header\ntorch==2.14.1+cu130\nfoo>=1\nbar\nbaz @ https://x.org/baz.whl\n-e .\nqux==1.*\n"
    )
    assert [line.split(":")[0] for line in loose_pins(lock)] == [f"line {n}" for n in range(3, 8)]
    wanted, pinned = "dvc[s3]==3.67.1\nTorch>=2\nbandit\n", "torch==2.14.1\ndvc==3.67.1\n"
    assert unlocked(wanted, pinned) == {"bandit"}
