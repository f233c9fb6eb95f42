"""The layers point down, and the product is only the product (docs/architecture.md).

Layers, lowest first; each imports only from itself and the layers below it:
    events/                 the contract: CloudEvent types, JSON Schemas, storage-notification parsers
    shared/platform/        knows no domain: settings, db, storage, clamd client, http, auth, telemetry, delivery
    shared/<domain>/        uploads, scanning, retention, intake (domains may use each other, not cyclically)
    functions/<name>/       thin entry points
    local-dev/ (dropgate_local), tests/, bench/   development only: never imported by the layers above
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("uploads", "scanning", "retention", "intake", "webhooks")
# What each layer may import from this repository (prefixes of module names).
ALLOWED = {
    "shared": (),  # the package's docstring only
    "events": ("events",),
    "shared.platform": ("events", "shared.platform"),
    **{f"shared.{domain}": ("events", "shared.platform", *(f"shared.{d}" for d in DOMAINS)) for domain in DOMAINS},
    "functions": ("events", "shared"),
}
OURS = ("events", "shared", "functions", "dropgate_local", "tests", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from shared import x`
    return {name for name in found if name.split(".")[0] in OURS}


def product_files() -> list[Path]:
    return sorted(p for folder in ("events", "shared", "functions") for p in (ROOT / folder).rglob("*.py"))


def test_every_layer_imports_only_downwards() -> None:
    wrong = []
    for path in product_files():
        layer = layer_of(module_name(path))
        assert layer is not None, f"{path} is in no layer: add it to docs/architecture.md and ALLOWED"
        for imported in imported_modules(path):
            # `from shared.platform import audit` names the package and its module: the module decides.
            if imported in ("shared", "events") or not any(imported.startswith(p) for p in OURS):
                continue
            if not any(imported == allowed or imported.startswith(allowed + ".") for allowed in ALLOWED[layer]):
                wrong.append(f"{path.relative_to(ROOT)} ({layer}) imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_an_upward_import(tmp_path) -> None:
    """The check itself can fail: an events module importing the platform is reported."""
    fake = tmp_path / "bad.py"
    fake.write_text("from shared.platform.settings import Settings\nimport dropgate_local.stack\n")
    imported = imported_modules(fake)
    assert "shared.platform.settings" in imported and "dropgate_local.stack" in imported
    assert not any(name.startswith(ALLOWED["events"]) for name in imported)


def test_no_status_is_spelled_outside_the_model() -> None:
    """Every module asks shared/uploads/model.py (UploadStatus and its groups) instead of keeping its own tuple.

    The event contract (events/) spells the verdicts its events carry, which are wire values below the
    domain; the next test holds the two to each other.
    """
    statuses = ("pending", "uploaded", "scanning", "clean", "infected", "rejected", "unscannable", "released",
                "aborted", "abandoned", "expired")
    tuples = []
    for path in product_files():
        if path.name == "model.py" or path.is_relative_to(ROOT / "events"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple | ast.Set | ast.List) and len(node.elts) > 1 and all(
                    isinstance(e, ast.Constant) and e.value in statuses for e in node.elts):
                tuples.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not tuples, "status groups kept outside shared/uploads/model.py: " + ", ".join(tuples)


# Dicts of other shapes that share a key with an `uploads` column: (module, the name the code gives the dict).
NOT_UPLOAD_ROWS = {
    ("shared/platform/delivery.py", "event"): "a CloudEvent's attributes (id)",
    ("shared/platform/http.py", "event"): "a CloudEvent's attributes (id)",
    ("functions/presign/admin_routes.py", "body"): "a request's JSON body (sha256)",
    ("shared/retention/reconcile.py", "after"): "the pending sweep's saved cursor position (created_at, id)",
    ("shared/scanning/blocklist.py", "r"): "a sha256_blocklist row (sha256)",
    ("shared/uploads/storage_facts.py", "location"): "a storage_objects row (etag, content_type)",
}


def column_subscripts(source: str) -> list[tuple[int, str, str]]:
    """(line, what is subscripted, key) of every `x["<a column of uploads>"]` in a module's source."""
    import dataclasses

    from shared.uploads.model import UploadRow

    columns = {field.name for field in dataclasses.fields(UploadRow)}
    return sorted((node.lineno, ast.unparse(node.value), node.slice.value) for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                  and node.slice.value in columns)


def test_no_module_reads_an_upload_row_as_a_dict() -> None:
    """Upload rows are shared/uploads/model.py's UploadRow (`upload.object_key`), never dicts keyed by column."""
    found = []
    for path in product_files():
        if path.is_relative_to(ROOT / "events"):
            continue  # the contract's JSON (bucket, key, etag...) is no row of the database
        module = path.relative_to(ROOT).as_posix()
        found += [f"{module}:{line}: {name}[{key!r}]" for line, name, key in column_subscripts(path.read_text())
                  if (module, name) not in NOT_UPLOAD_ROWS]
    assert not found, "read upload rows as UploadRow (a dict of another shape goes in NOT_UPLOAD_ROWS, with why):\n" \
        + "\n".join(found)


def test_the_row_rule_catches_a_dict_read() -> None:
    source = 'row["object_key"]\nif upload[ "status" ] == "clean": pass\nentry["Key"]\nrows[-1]["created_at"]\n'
    assert [(name, key) for _, name, key in column_subscripts(source)] == [
        ("row", "object_key"), ("upload", "status"), ("rows[-1]", "created_at")]


@pytest.fixture(scope="module")
def product_wheel(tmp_path_factory) -> Path:
    """Built from what the Dockerfile copies into its build stage, and nothing else (no build/ left in the repo)."""
    source, out = tmp_path_factory.mktemp("context"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("shared", "events"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
                    "-w", str(out), str(source)], check=True, timeout=600)
    [wheel] = out.glob("dropgate-*.whl")
    return wheel


def test_the_product_wheel_holds_the_product_and_no_dev_code(product_wheel: Path) -> None:
    names = zipfile.ZipFile(product_wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.startswith("dropgate-")}
    assert top == {"events", "shared"}, top
    assert not [n for n in names if "dropgate_local" in n or "local-dev" in n or "devauth" in n]
    for needed in ("shared/platform/migrations/0006_verdict_safety.sql", "events/schemas/scan-verdict.json",
                   "shared/scanning/service.py", "shared/intake/webhook.py"):
        assert needed in names, needed
    metadata = next(n for n in names if n.endswith("/METADATA"))
    requires = [line for line in zipfile.ZipFile(product_wheel).read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not [r for r in requires if any(dev in r for dev in ("seaweedfs", "pgserver", "kubectl", "pyyaml"))]


def test_the_contract_s_verdicts_are_the_model_s() -> None:
    import typing

    from events.types import ScanVerdict, Verdict
    from shared.uploads.model import VERDICTS, values

    assert sorted(typing.get_args(Verdict)) == values(VERDICTS) == sorted(ScanVerdict.TYPES.values())


# The target is ~400 lines a module (issue 17); this ceiling keeps the split from sliding back while
# the last few (retention/expiry.py, platform/settings.py, scanning/archives.py) are brought under it.
MODULE_LINE_CEILING = 500


def test_no_product_module_is_too_long_to_read() -> None:
    long = {str(p.relative_to(ROOT)): n for p in product_files() if (n := len(p.read_text().splitlines())) >
            MODULE_LINE_CEILING}
    assert not long, long
