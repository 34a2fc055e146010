"""Readers of case-level label tables in the formats users have, joined by case id.

Recognised by their header (``read_table``):

==========================  ===============================================  ========================================
format                      columns used                                      targets
==========================  ===============================================  ========================================
GliomaAnalysis / phantoms   case_id, grade, idh | idh1_mutant,               grade, idh, codeletion_1p19q, mgmt
                            codeletion_1p19q, mgmt
RSNA-MICCAI 2021            BraTS21ID, MGMT_value                            mgmt
BraTS name_mapping.csv      Grade, BraTS_20xx_subject_ID..., TCGA id         grade (ids of all years become aliases)
UCSF-PDGM metadata          ID, WHO CNS Grade, IDH, 1p/19q, MGMT status,     grade (WHO 4 = HGG, 2-3 = LGG as in
                            BraTS21 ID                                        BraTS), idh, codeletion_1p19q, mgmt
TCGA GBM/LGG mutations      Case_ID, Grade (GBM/LGG), IDH1, IDH2             grade, idh (IDH1 or IDH2 mutated)
==========================  ===============================================  ========================================

Targets are 1 for HGG / IDH-mutant / 1p19q-codeleted / MGMT-methylated, 0 for the other class, None when unknown
(blank, NA, "unknown", "indeterminate", "relative co-deletion"). Ids are compared by :func:`case_key`, which folds
the naming of BraTS years (``Brats18_TCIA10_639_1`` = ``BraTS19_TCIA10_639_1``; ``BraTS2021_00097`` = RSNA ``97``
= ``BraTS-GLI-00097-000``), and :class:`LabelIndex` follows alias chains across tables (a BraTS 2018 case ->
its TCGA id in name_mapping -> IDH1 in the TCGA table).
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Set

from GliomaAnalysisLib.errors import GliomaAnalysisError

TASKS = ("grade", "idh", "codeletion_1p19q", "mgmt")
_UNKNOWN = {"", "na", "n/a", "nan", "unknown", "indeterminate", "not available", "none", "relative co-deletion"}
_POSITIVE = {
    "grade": {"hgg", "gbm", "4", "iv", "high", "1"},
    "idh": {"mutant", "mutated", "1", "yes", "true", "positive"},
    "codeletion_1p19q": {"codeleted", "co-deletion", "codeletion", "1", "yes", "true"},
    "mgmt": {"methylated", "positive", "1", "yes", "true"},
}
_NEGATIVE = {
    "grade": {"lgg", "2", "3", "ii", "iii", "low", "0"},
    "idh": {"wildtype", "wild-type", "wt", "0", "no", "false", "negative"},
    "codeletion_1p19q": {"intact", "non-codeleted", "0", "no", "false"},
    "mgmt": {"unmethylated", "negative", "0", "no", "false"},
}


class LabelTableError(GliomaAnalysisError):
    """A label table cannot be read or has a format we do not know."""


@dataclass
class CaseTargets:
    """Binary targets of one case; None = unknown."""

    grade: Optional[int] = None
    idh: Optional[int] = None
    codeletion_1p19q: Optional[int] = None
    mgmt: Optional[int] = None

    def as_dict(self) -> Dict[str, Optional[int]]:
        return asdict(self)

    def fill_from(self, other: "CaseTargets") -> None:
        """Take ``other``'s value for every task this one does not know."""
        for task in TASKS:
            if getattr(self, task) is None:
                setattr(self, task, getattr(other, task))


@dataclass
class LabelRecord:
    """One table row: its ids (as :func:`case_key`) and targets."""

    keys: Set[str]
    targets: CaseTargets
    source: str = ""


def case_key(case_id: str) -> str:
    """Canonical form of a case id for joins across tables and BraTS years."""
    text = case_id.strip().lower()
    match = re.fullmatch(r"brats-gli-(\d{5})-\d{3}", text)
    if match:
        return match.group(1)
    text = re.sub(r"^brats(?:20)?(?:1[7-9]|2[0-9])?_(?:training_|validation_)?", "", text)
    if text.isdigit():
        return f"{int(text):05d}"
    return text


def parse_target(task: str, value: Optional[str]) -> Optional[int]:
    """0, 1 or None from a table cell (see the module docstring); IDH cells naming a variant count as mutant."""
    text = (value or "").strip().lower()
    if text in _UNKNOWN:
        return None
    if text in _POSITIVE[task]:
        return 1
    if text in _NEGATIVE[task]:
        return 0
    if task == "idh" and (re.match(r"idh[12]\b", text) or text.startswith("mutat")):
        return 1
    if task == "codeletion_1p19q" and "co-deletion" in text and "relative" not in text:
        return 1
    raise ValueError(f"unrecognised {task} value {value!r}")


def _rows(path: "str | os.PathLike[str]") -> List[Dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelTableError(f"{path}: cannot read label table ({exc})") from None


def read_table(path: "str | os.PathLike[str]") -> List[LabelRecord]:
    """All rows of a label table in one of the recognised formats."""
    rows = _rows(path)
    if not rows:
        raise LabelTableError(f"{path}: label table is empty")
    header = set(rows[0])
    source = os.path.basename(str(path))
    records = []
    try:
        for line, row in enumerate(rows, start=2):
            try:
                records.append(_record(header, row, source))
            except ValueError as exc:
                raise LabelTableError(f"{path}: line {line}: {exc}") from None
    except KeyError as exc:
        raise LabelTableError(f"{path}: missing column {exc}") from None
    if records and records[0] is None:
        raise LabelTableError(f"{path}: unknown label table format (columns: {', '.join(sorted(header))})")
    return records


def _record(header: Set[str], row: Dict[str, str], source: str) -> Optional[LabelRecord]:
    if "BraTS21ID" in header and "MGMT_value" in header:  # RSNA-MICCAI 2021
        return LabelRecord({case_key(row["BraTS21ID"])}, CaseTargets(mgmt=parse_target("mgmt", row["MGMT_value"])),
                           source)
    if "WHO CNS Grade" in header:  # UCSF-PDGM
        keys = {case_key(row["ID"])} | ({case_key(row["BraTS21 ID"])} if row.get("BraTS21 ID") else set())
        return LabelRecord(keys, CaseTargets(parse_target("grade", row["WHO CNS Grade"]),
                                             parse_target("idh", row["IDH"]),
                                             parse_target("codeletion_1p19q", row["1p/19q"]),
                                             parse_target("mgmt", row["MGMT status"])), source)
    if "Case_ID" in header and "IDH1" in header:  # TCGA GBM/LGG mutations
        idh = [parse_target("idh", row.get(col)) for col in ("IDH1", "IDH2") if col in row]
        known = [v for v in idh if v is not None]
        return LabelRecord({case_key(row["Case_ID"])},
                           CaseTargets(grade=parse_target("grade", row["Grade"]),
                                       idh=max(known) if known else None), source)
    id_columns = [c for c in header if c.endswith("_subject_ID")]
    if "Grade" in header and id_columns:  # BraTS name_mapping.csv
        keys = {case_key(row[c]) for c in id_columns if row.get(c) and row[c].strip().upper() != "NA"}
        return LabelRecord(keys, CaseTargets(grade=parse_target("grade", row["Grade"])), source)
    if "case_id" in header:  # GliomaAnalysis / phantom labels.csv
        idh_column = "idh" if "idh" in header else "idh1_mutant" if "idh1_mutant" in header else None
        return LabelRecord({case_key(row["case_id"])}, CaseTargets(
            parse_target("grade", row.get("grade")),
            parse_target("idh", row.get(idh_column)) if idh_column else None,
            parse_target("codeletion_1p19q", row.get("codeletion_1p19q")),
            parse_target("mgmt", row.get("mgmt"))), source)
    return None


@dataclass
class LabelIndex:
    """Records of several tables, joined through shared ids (transitively)."""

    records: List[LabelRecord] = field(default_factory=list)

    @classmethod
    def from_tables(cls, paths: Iterable["str | os.PathLike[str]"]) -> "LabelIndex":
        index = cls()
        for path in paths:
            index.records += read_table(path)
        return index

    def lookup(self, case_id: str) -> CaseTargets:
        """Targets of ``case_id`` from every record connected to it by shared ids; the first table wins a conflict."""
        keys, found, changed = {case_key(case_id)}, [], True
        remaining = list(self.records)
        while changed:
            changed = False
            for record in list(remaining):
                if record.keys & keys:
                    keys |= record.keys
                    found.append(record)
                    remaining.remove(record)
                    changed = True
        targets = CaseTargets()
        for record in found:
            targets.fill_from(record.targets)
        return targets


def read_labels(path: "str | os.PathLike[str]") -> Dict[str, CaseTargets]:
    """A GliomaAnalysis-style ``labels.csv`` (case_id column) as case id -> targets."""
    rows = _rows(path)
    if rows and "case_id" not in rows[0]:
        raise LabelTableError(f"{path}: expected a case_id column")
    index = LabelIndex(read_table(path))
    return {row["case_id"]: index.lookup(row["case_id"]) for row in rows}
