"""A replay's figures: summary.json and the table printed at the end. Counts only, never a patient id or
its hash; problems in the export are located by file and line, never quoted."""
from __future__ import annotations

from typing import Any

from ..engine.rulebook import INDICATOR_RANK
from .request import Plan
from .tasks import EXAMPLES_KEPT, MEDICATIONS_KEPT, Problem, Tally


def build(tally: Tally, plan: Plan, export: str, run: dict[str, Any]) -> dict[str, Any]:
    answered = tally.patients
    rules = [{"rule": rule, "indicator": indicator, "silent": silent, "patients": n,
              "per_1000": _per_1000(n, answered)} for (rule, indicator, silent), n in tally.cards.items()]
    rules.sort(key=lambda r: (-r["patients"], r["rule"], INDICATOR_RANK.get(r["indicator"], 3), r["silent"]))
    return {
        "export": export,
        "at": plan.at.isoformat(),
        "hook": plan.hook,
        "service": plan.service_id,
        "product": plan.product,
        "draft_orders": [d["medicationCodeableConcept"]["text"] for d in plan.drafts],
        "patients": {"in_export": tally.patient_records, "answered": answered,
                     "refused": sum(tally.refused.values()), "no_card": tally.no_card,
                     "no_card_per_1000": _per_1000(tally.no_card, answered)},
        "rules": rules,
        "cards_per_patient": {str(n): tally.cards_per_patient[n] for n in sorted(tally.cards_per_patient)},
        "refused": dict(tally.refused.most_common()),
        "input": {
            "lines": tally.lines, "resources": tally.resources,
            "malformed_lines": tally.malformed,
            "without_patient": {"count": sum(tally.without_patient.values()), "by_type": dict(tally.without_patient)},
            "problems": [_located(p, tally) for p in sorted(tally.problems, key=_order)[:EXAMPLES_KEPT]],
            "dated_after_replay": tally.later,
            "without_patient_resource": {"patients": tally.orphan_patients, "resources": tally.orphan_resources},
            "not_read": dict(tally.not_read.most_common()),
            "medications": {"count": tally.medications, "kept": min(tally.medications, MEDICATIONS_KEPT)},
        },
        "run": run,
    }


def table(summary: dict[str, Any]) -> str:
    """The figures as the terminal shows them at the end of a run."""
    patients, rules = summary["patients"], summary["rules"]
    what = f"{summary['product']} ordered ({summary['hook']})" if summary["product"] else summary["hook"]
    lines = [f"Population replay of {summary['export']}: {what} on {summary['at']}",
             f"{patients['answered']} calls answered ({patients['in_export']} patients in the export, "
             f"{patients['refused']} refused)", ""]
    silent = any(r["silent"] for r in rules)
    head = ("rule", "indicator", *(("shown",) if silent else ()), "patients", "per 1,000")
    rows = [(r["rule"], r["indicator"], *(("silent" if r["silent"] else "live",) if silent else ()),
             str(r["patients"]), f"{r['per_1000']:.1f}") for r in rules]
    rows.append(("(no card at all)", "", *(("",) if silent else ()), str(patients["no_card"]),
                 f"{patients['no_card_per_1000']:.1f}"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    for row in (head, *rows):
        lines.append("  ".join(c.rjust(w) if i >= len(head) - 2 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    lines += ["", *input_notes(summary)]
    return "\n".join(lines)


def input_notes(summary: dict[str, Any]) -> list[str]:
    """What in the export was not used, and why, one sentence each."""
    data = summary["input"]
    notes = [f"Read {data['lines']} lines: {data['resources']} resources, {data['malformed_lines']} malformed lines."]
    without = data["without_patient"]
    if without["count"]:
        kinds = ", ".join(f"{k} {n}" for k, n in without["by_type"].items())
        notes.append(f"{without['count']} resources name no patient ({kinds}): left out.")
    if data["problems"]:
        notes.append("First problems: " + "; ".join(f"{p['file']} line {p['line']}: {p['what']}" for p in data["problems"]) + ".")
    if data["dated_after_replay"]:
        notes.append(f"{data['dated_after_replay']} resources dated after {summary['at']}: left out.")
    orphans = data["without_patient_resource"]
    if orphans["patients"]:
        notes.append(f"{orphans['resources']} resources of {orphans['patients']} patients with no Patient resource "
                     "in the export: left out.")
    medications = data["medications"]
    if medications["count"] > medications["kept"]:
        notes.append(f"{medications['count']} Medication resources: only the first {medications['kept']} were read "
                     "for the doses that name their drug by reference; the others' doses are reported as unidentified.")
    for why, n in summary["refused"].items():
        notes.append(f"{n} calls refused: {why}")
    if data["not_read"]:
        notes.append("Not read (the prefetch asks for no such resource): "
                     + ", ".join(f"{k} {n}" for k, n in data["not_read"].items()) + ".")
    return notes


def _per_1000(count: int, total: int) -> float:
    return round(count * 1000 / total, 1) if total else 0.0


def _order(problem: Problem) -> tuple[str, int, int]:
    return problem.file, problem.chunk, problem.line


def _located(problem: Problem, tally: Tally) -> dict[str, Any]:
    """A problem with its line number in the whole file (chunks count their own lines)."""
    before = sum(n for (name, index), n in tally.chunk_lines.items() if name == problem.file and index < problem.chunk)
    return {"kind": problem.kind, "file": problem.file, "line": before + problem.line, "what": problem.what}
