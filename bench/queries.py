"""The fixed set of C-FIND queries, with the answer count the generated data implies at each archive size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset

from synth import Layout, SeriesPlan, StudyPlan, month_range

STUDY_RETURN_KEYS = ("StudyInstanceUID", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                     "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
                     "ReferringPhysicianName", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                     "NumberOfStudyRelatedInstances")
SERIES_RETURN_KEYS = ("Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined", "SeriesDate",
                      "NumberOfSeriesRelatedInstances")
IMAGE_RETURN_KEYS = ("SOPClassUID", "InstanceNumber", "Rows", "Columns")


@dataclass
class FindQuery:
    name: str
    model: str
    """'patient' (Patient Root) or 'study' (Study Root)."""
    identifier: Dataset
    expected: Callable[[int], int]
    """Number of matches in an archive holding the first N instances of the query set."""


def _identifier(level: str, return_keys: tuple[str, ...], **matching: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in return_keys:
        setattr(ds, keyword, None)
    for keyword, value in matching.items():
        setattr(ds, keyword, value)
    return ds


def _present(layout: Layout, size: int) -> list[tuple[StudyPlan, list[tuple[SeriesPlan, int]]]]:
    """Studies with at least one instance among the first ``size``, with their series' instance counts."""
    result = []
    for study in layout.studies:
        if study.first_index >= size:
            break
        index = study.first_index
        series_counts = []
        for series in study.series:
            count = max(0, min(series.count, size - index))
            if count:
                series_counts.append((series, count))
            index += series.count
        result.append((study, series_counts))
    return result


def build_queries(layout: Layout, smallest: int) -> list[FindQuery]:
    """Queries whose targets are all in the first ``smallest`` instances (so they exist at every size)."""
    complete = [study for study in layout.studies if study.first_index + study.count <= smallest]
    if len(complete) < 12:
        raise ValueError(f"{smallest} instances hold too few studies for the query set")

    def count_studies(size: int, keep: Callable[[StudyPlan, list[tuple[SeriesPlan, int]]], bool]) -> int:
        return sum(1 for study, series in _present(layout, size) if keep(study, series))

    name_prefix = complete[3].patient.name.split("^")[0][:4].title()
    patient_id = complete[7].patient.patient_id
    month = month_range(complete[5].study_date)
    low, high = month.split("-")
    accession = complete[11].accession
    one_day = complete[8].study_date
    multi_series = max(complete, key=lambda study: (len(study.series), -study.number))
    biggest = max((series for study in complete for series in study.series), key=lambda series: series.count)

    def patients_named(size: int) -> int:
        return len({study.patient.number for study, _series in _present(layout, size)
                    if study.patient.name.upper().startswith(name_prefix.upper())})

    def series_of(study_uid: str, size: int) -> int:
        return sum(len(series) for study, series in _present(layout, size) if study.uid == study_uid)

    def instances_of(series_uid: str, size: int) -> int:
        return sum(count for _study, series in _present(layout, size) for plan, count in series
                   if plan.uid == series_uid)

    return [
        FindQuery(
            "Patient name wildcard (PATIENT level)", "patient",
            _identifier("PATIENT", ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                                    "NumberOfPatientRelatedStudies"), PatientName=f"{name_prefix}*"),
            patients_named),
        FindQuery(
            "PatientID exact (STUDY level)", "study",
            _identifier("STUDY", STUDY_RETURN_KEYS, PatientID=patient_id),
            lambda size: count_studies(size, lambda study, _s: study.patient.patient_id == patient_id)),
        FindQuery(
            "StudyDate range, one month", "study",
            _identifier("STUDY", STUDY_RETURN_KEYS, StudyDate=month),
            lambda size: count_studies(size, lambda study, _s: low <= study.study_date <= high)),
        FindQuery(
            "AccessionNumber exact", "study",
            _identifier("STUDY", STUDY_RETURN_KEYS, AccessionNumber=accession),
            lambda size: count_studies(size, lambda study, _s: study.accession == accession)),
        FindQuery(
            "ModalitiesInStudy = MG", "study",
            _identifier("STUDY", STUDY_RETURN_KEYS, ModalitiesInStudy="MG"),
            lambda size: count_studies(
                size, lambda _study, series: any(plan.modality == "MG" for plan, _n in series))),
        FindQuery(
            "Study universal keys, one StudyDate", "study",
            _identifier("STUDY", (*STUDY_RETURN_KEYS, "InstitutionName", "PatientAge",
                                  "SOPClassesInStudy"), StudyDate=one_day),
            lambda size: count_studies(size, lambda study, _s: study.study_date == one_day)),
        FindQuery(
            "SERIES level by StudyInstanceUID", "study",
            _identifier("SERIES", SERIES_RETURN_KEYS, StudyInstanceUID=multi_series.uid,
                        SeriesInstanceUID=""),
            lambda size: series_of(multi_series.uid, size)),
        FindQuery(
            f"IMAGE level by SeriesInstanceUID ({biggest.count} instances)", "study",
            _identifier("IMAGE", IMAGE_RETURN_KEYS, StudyInstanceUID=_study_of(layout, biggest.uid),
                        SeriesInstanceUID=biggest.uid, SOPInstanceUID=""),
            lambda size: instances_of(biggest.uid, size)),
    ]


def _study_of(layout: Layout, series_uid: str) -> str:
    for study in layout.studies:
        if any(series.uid == series_uid for series in study.series):
            return study.uid
    raise KeyError(series_uid)


UNIQUE_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
              "IMAGE": "SOPInstanceUID"}
_UNORDERED = frozenset({"ModalitiesInStudy", "SOPClassesInStudy"})


def _text(dataset: Dataset, keyword: str) -> str:
    if keyword not in dataset:
        return "<absent>"
    value = dataset[keyword].value
    if value is None:
        return ""
    if isinstance(value, list | tuple) or (hasattr(value, "__iter__") and not isinstance(value, str | bytes)):
        items = [str(item).strip() for item in value]
        return "\\".join(sorted(items) if keyword in _UNORDERED else items)
    return str(value).strip()


def answer_table(query: FindQuery, matches: list[Dataset]) -> dict[str, dict[str, str]]:
    """Matches by unique key: the requested attributes' values as text."""
    level = str(query.identifier.QueryRetrieveLevel)
    keywords = [element.keyword for element in query.identifier if element.keyword != "QueryRetrieveLevel"]
    return {_text(match, UNIQUE_KEY[level]): {keyword: _text(match, keyword) for keyword in keywords}
            for match in matches}


def compare_answers(query: FindQuery, answers: dict[str, list[Dataset]], limit: int = 4) -> list[str]:
    """Where two servers' answers to the same query differ (matched entities, then attribute values)."""
    (first, first_matches), (second, second_matches) = list(answers.items())[:2]
    left, right = answer_table(query, first_matches), answer_table(query, second_matches)
    problems: list[str] = []
    only_left, only_right = sorted(set(left) - set(right)), sorted(set(right) - set(left))
    if only_left or only_right:
        problems.append(f"{len(only_left)} matches only from {first}, {len(only_right)} only from {second}")
    differing: dict[str, tuple[str, str]] = {}
    for key in sorted(set(left) & set(right)):
        for keyword, value in left[key].items():
            other = right[key].get(keyword, "<absent>")
            if value != other and keyword not in differing:
                differing[keyword] = (value, other)
    for keyword, (value, other) in list(differing.items())[:limit]:
        problems.append(f"{keyword}: {first} {value!r} vs {second} {other!r}")
    if len(differing) > limit:
        problems.append(f"... and {len(differing) - limit} more attributes differ")
    return problems
