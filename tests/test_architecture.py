"""The import-layer rules of SPEC §2, checked with import-linter as part of the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_layer_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_module_documents_what_it_owns() -> None:
    undocumented = []
    for path in sorted((ROOT / "src" / "sluiceway").rglob("*.py")):
        text = path.read_text(encoding="utf-8").lstrip()
        if not text.startswith('"""') and path.stat().st_size > 0:
            undocumented.append(str(path.relative_to(ROOT)))
    assert undocumented == []
