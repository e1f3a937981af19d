"""The four verdicts an operator gives a part and the label each one records; undo; what can be done with
a part that failed to explain (acknowledge it, explain it again)."""

from __future__ import annotations

import contextlib
import os

from ..common.identity import FIELDS, Identity
from ..errors import InspectorError, VerdictConflict

VERDICTS = {  # form value -> (stored verdict, button text)
    "confirm": ("confirm", "Confirm"),
    "overrule_good": ("overrule", "Overrule → good"),
    "overrule": ("overrule", "Overrule → other class"),
    "inconclusive": ("inconclusive", "Inconclusive"),
}


class VerdictError(InspectorError):
    """A verdict that does not fit the part (unknown verdict, a label that is no class, ...)."""


def label_for(
    verdict: str, prediction: str | None, label: str | None, classes, good_classes
) -> tuple[str, str | None]:
    """(stored verdict, the label the part now has) for a verdict given on a part predicted ``prediction``."""
    if verdict not in VERDICTS:
        raise VerdictError(f"verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
    stored = VERDICTS[verdict][0]
    if verdict == "confirm":
        return stored, prediction
    if verdict == "inconclusive":
        return stored, None
    if verdict == "overrule_good":
        if not good_classes:
            raise VerdictError("no good_classes in the config: overrule to a named class instead")
        if prediction in good_classes:
            raise VerdictError(f"the part is already predicted {prediction}: confirm it instead")
        return stored, good_classes[0]
    if not label:
        raise VerdictError("overrule: choose the class the part really is")
    if label not in classes:
        raise VerdictError(f"label {label!r} is not a class; known: {', '.join(classes)}")
    if label == prediction:
        raise VerdictError(f"the part is already predicted {label}: confirm it instead")
    return stored, label


def overrule_choices(prediction: str | None, scores: list[tuple[str, float | None]], classes,
                     good_classes) -> list[str]:
    """The classes key 3 offers (every class but the predicted one), the most likely first by the model's
    scores; the good class that key 2 gives goes last, so 3 starts at the likeliest other defect."""
    score = dict(scores)
    others = [c for c in classes if c != prediction]
    others.sort(key=lambda c: -(score.get(c) if score.get(c) is not None else float("-inf")))
    if good_classes and prediction not in good_classes and good_classes[0] in others:
        others.remove(good_classes[0])
        others.append(good_classes[0])
    return others


def record_verdict(station, row: dict, verdict: str, label: str | None, comment: str | None,
                   reviewer: str, *, seen: int | None = None) -> dict:
    """Append a verdict on the part ``row`` (from a page or the API); the stored review row. ``seen``: the
    newest verdict the reviewer was shown (:meth:`~inspector.store.Store.add_review` refuses the verdict,
    with :class:`~inspector.errors.VerdictConflict`, when another was given since)."""
    if row["status"] != "done":
        raise VerdictError(f"part {row['id']} has no explanation (it failed); nothing to review")
    stored, new_label = label_for(
        verdict, row["prediction_name"], label or None, station.class_names, station.good_classes
    )
    note = (comment or "").strip()[:2000] or None
    review = station.store.add_review(row["id"], verdict=stored, label=new_label, reviewer=reviewer,
                                      note=note, seen=seen)
    station.poke()
    return review


def acknowledge(station, row: dict, reviewer: str, comment: str | None, *, seen: int | None = None) -> dict:
    """Note that a reviewer saw why a part failed to explain (a row like a verdict; it gives no label)."""
    if row["status"] != "failed":
        raise VerdictError(f"part {row['id']} was explained; there is no failure to acknowledge")
    note = (comment or "").strip()[:2000] or None
    review = station.store.add_review(row["id"], verdict="acknowledge", reviewer=reviewer, note=note,
                                      seen=seen)
    station.poke()
    return review


def explain_again(station, row: dict, reviewer: str) -> tuple[int, str]:
    """Explain a failed part's image again from where its file is now (the failed folder, say), and note
    the request and its outcome on the part. (the part that holds the result now, what happened)."""
    from . import files

    if row["status"] != "failed":
        raise VerdictError(f"part {row['id']} is explained already; there is nothing to explain again")
    path = files.original_path(row)
    if path is None:
        raise VerdictError("the image is no longer at any path the store knows, with its recorded content; "
                           "put it back in the watched folder (or upload it) to explain it again")
    arrived = row.get("parts") or []
    known = arrived[-1] if arrived else {}
    identity = Identity(**{f: known.get(f) for f in FIELDS}, tags=tuple(known.get("tags") or ()))
    outcome = station.explain_file(os.fsdecode(path), identity)  # the same part as when it failed
    if outcome.failed:
        said = f"failed again: {outcome.error}"
    elif outcome.result_id == row["id"]:
        said = "explained: the part now has its explanation"
    else:
        said = f"explained as part #{outcome.result_id} (the station's settings differ from the failed run's)"
    with contextlib.suppress(VerdictConflict):  # the same request moments ago is in the history already
        station.store.add_review(row["id"], verdict="explain_again", reviewer=reviewer, note=said)
    station.poke()
    return outcome.result_id or row["id"], said
