"""The rule catalogue a P&T committee reviews: generated from rules/, and the shipped copy is current."""
import subprocess
import sys

from conftest import ROOT


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cds_service.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_docs_rules_md_is_the_current_catalogue():
    result = _cli("rules", "--markdown")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (ROOT / "docs" / "rules.md").read_text(encoding="utf-8") == result.stdout, \
        "docs/rules.md is stale: run `.venv/bin/cds-service rules --markdown > docs/rules.md`"


def test_catalogue_names_every_rule_with_its_thresholds(book):
    result = _cli("rules")
    assert result.returncode == 0
    for rule_id in book.rules:
        assert f"{rule_id}  [" in result.stdout
    assert "neutrophils.critical_below = 0.5" in result.stdout


def test_catalogue_reflects_site_overrides(tmp_path):
    overrides = tmp_path / "site.yaml"
    overrides.write_text("thresholds:\n  neutrophils:\n    critical_below: 0.4\nrules:\n  cardiac-history:\n    enabled: false\n")
    result = subprocess.run([sys.executable, "-m", "cds_service.cli", "rules"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, env={"CDS_RULES_OVERRIDES": str(overrides), "PATH": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "neutrophils.critical_below = 0.4" in result.stdout
    assert "cardiac-history" not in result.stdout


def test_a_bad_overrides_file_is_refused_naming_the_key(tmp_path):
    overrides = tmp_path / "site.yaml"
    overrides.write_text("thresholds:\n  neutrophils:\n    critical_bellow: 0.4\n")
    result = subprocess.run([sys.executable, "-m", "cds_service.cli", "rules"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, env={"CDS_RULES_OVERRIDES": str(overrides), "PATH": ""})
    assert result.returncode != 0
    assert "thresholds.neutrophils.critical_bellow" in result.stdout
