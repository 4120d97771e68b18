"""The "Shortcut evidence" Markdown, from a certificate's probe results; pure Python, no TensorFlow.

Part of the core package (a build needs it; the training extra does not). Used twice: in
``certificate.md`` of a ``baseline`` run, and in the dataset card that ``build`` writes, where
``card_section(build_report, root)`` (``card_extra_section``: as one of the card's extra sections) looks
for certificates committed in the release's own manifest folder (``<manifest>/certificates/**/
certificate.json``: shipped in the wheel and covered by the manifest's sha256, so a wheel install and a
checkout write the same card) whose fingerprint is the fingerprint of one of the release's
configurations, and says so plainly when there is none yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from . import CLASS_NAMES
from .release import stated_fingerprints

FLAG_MARGIN = 0.10
"""A probe is flagged when, for some class, its AUC interval's lower end clears 0.5 by this much (the
source hold-out: when its recall drop's interval's lower end exceeds it)."""

MIN_FLAG_SUPPORT = 10
"""A class flags a probe only with at least this many test images in it and out of it: with fewer, the
bootstrap draws from a handful of distinct values and its percentile interval is too narrow to trust
(on the 20 test films of the real fixtures a 3-epoch DCNN that answers one class for every film gets a
Pneumonia AUC interval of [0.61, 0.96] from 8 Pneumonia films)."""

CERTIFICATES_FOLDER = "certificates"
"""Where a release's certificates live, inside its manifest folder (``builder_manifests/<name>/<version>/``)."""

HEADING = "## Shortcut evidence"

_WHAT_IT_SEES = {
    "full model": "the whole film",
    "border": "only the outer border of each film (centre {fraction:.0%} box blanked)",
    "lung": "each film with a centred ellipse ({fraction:.0%} of each side, the lungs) blanked",
    "linear-film": "the whole film, as the linear models' yardstick",
    "linear-border": "only the outer border (centre 70% box blanked)",
    "linear-lung": "the film with a centred ellipse (70% of each side, the lungs) blanked",
    "linear-corners": "only the four corners (20% of each side): burned-in text and markers",
    "source": "thumbnails of the COVID-19 films, predicting their source",
    "metadata": "image size, file format, bit depth and intensity statistics only",
}
_ORDER = ("linear-film", "linear-border", "linear-lung", "linear-corners", "metadata", "border", "lung")
_HOLDOUTS = ("linear-holdout", "holdout")
_HIDDEN = {"border": "the centre of every film blanked", "lung": "the lung region of every film blanked",
           "corners": "only the corners of every film in view"}


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _bracket(interval: dict[str, Any] | None, show=_percent) -> str:
    if not interval or interval.get("low") is None:
        return ""
    return f" [{show(interval['low'])}, {show(interval['high'])}]"


def _auc(row: dict[str, Any] | None) -> str:
    if not row or row.get("auc") is None:
        return "–"
    return f"{row['auc']:.2f}" + _bracket(row.get("auc_interval"), lambda v: f"{v:.2f}")


def _kind(probe: dict[str, Any]) -> str:
    if probe.get("model_kind") == "dcnn" or probe["probe"] in ("border", "lung", "holdout") and "model_kind" not in probe:
        epochs, recipe = probe.get("epochs"), probe.get("recipe_epochs")
        return f"DCNN, {epochs} of {recipe} epochs" if epochs and recipe and epochs < recipe else "DCNN"
    return "linear"


def _classes(certificate: dict[str, Any]) -> list[str]:
    return list((certificate.get("metrics") or {}).get("per_class") or CLASS_NAMES)


def _rows(certificate: dict[str, Any], names: Iterable[str]) -> list[dict[str, Any]]:
    probes = certificate.get("probes") or {}
    return [probes[name] for name in names if name in probes]


def _best(probe: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The class with the highest AUC interval's lower end (else the highest AUC)."""
    rows = [(name, row) for name, row in ((probe.get("per_class") or {}).get("classes") or {}).items()
            if row.get("auc") is not None]
    if not rows:
        return None
    return max(rows, key=lambda item: ((item[1].get("auc_interval") or {}).get("low") or 0.0, item[1]["auc"]))


def _recovered(probe: dict[str, Any], name: str) -> str:
    parts = []
    for reference, label in (("full model", "the full model's"), ("linear film", "the linear whole-film reference's")):
        row = (probe.get("recovery") or {}).get(reference, {}).get(name)
        if row and row.get("auc_ratio") is not None:
            above = row.get("share_above_chance")
            parts.append(f"{row['auc_ratio']:.2f} of {label} {name} AUC"
                         + (f" ({above:.2f} of its margin above chance)" if above is not None else ""))
    return "; it reaches " + " and ".join(parts) if parts else ""


def _too_few(probe: dict[str, Any]) -> str:
    evidence = probe.get("per_class") or {}
    n = evidence.get("n", 0)
    few = [f"{name} ({row['support']})" for name, row in (evidence.get("classes") or {}).items()
           if row.get("auc") is not None and (row["support"] < MIN_FLAG_SUPPORT or n - row["support"] < MIN_FLAG_SUPPORT)]
    return (f" Too few test images to flag {', '.join(few)}: at least {MIN_FLAG_SUPPORT} on each side are needed."
            if few else "")


def _accuracy_note(probe: dict[str, Any]) -> str:
    rule = probe.get("accuracy_rule") or {}
    if rule.get("flagged", True) or probe.get("accuracy") is None:
        return ""
    where = "below" if probe["accuracy"] < probe["majority_rate"] else "within the flag margin of"
    return (f" Its overall accuracy, {_percent(probe['accuracy'])}, is {where} the majority-class rate "
            f"({_percent(probe['majority_rate'])}): the accuracy rule alone would not have flagged it.")


def meaning(probe: dict[str, Any], certificate: dict[str, Any] | None = None) -> str:
    """Plain sentences on what one probe's result means."""
    name = probe["probe"]
    if probe.get("status") != "ran":
        return f"Not run: {probe.get('reason', 'no reason recorded')}."
    if name in _HOLDOUTS:
        return _holdout_meaning(probe)
    if "per_class" not in probe:  # a certificate written before per-class evidence
        flag = "flagged by the accuracy rule" if probe.get("flagged") else "not flagged"
        return (f"Accuracy {_percent(probe.get('accuracy'))} against a majority-class rate of "
                f"{_percent(probe.get('majority_rate'))}: {flag} (a certificate without per-class numbers).")
    separated = probe.get("separated_classes") or []
    best = _best(probe)
    if probe.get("role") == "reference":
        aucs = ", ".join(f"{cls} {_auc(row)}" for cls, row in probe["per_class"]["classes"].items())
        return f"The yardstick of the linear probes, with the lungs in view: AUC {aucs}."
    if name == "source":
        if probe["flagged"]:
            return (f"Among COVID-19 films a linear model on thumbnails tells {', '.join(separated)} from the other "
                    f"sources (AUC {', '.join(_auc(probe['per_class']['classes'][s]) for s in separated)}): each "
                    "source has its own look, and where classes come from different sources a model can learn the "
                    "source instead of the disease." + _too_few(probe))
        return ("Among COVID-19 films a linear model on thumbnails does not tell the sources apart beyond chance and "
                "noise at this resolution." + _too_few(probe))
    full = ((certificate or {}).get("metrics") or {}).get("per_class_evidence")
    if name in ("border", "lung") and not probe["flagged"] and full and not any(
            (row.get("auc_interval") or {}).get("low", 0) > 0.5 + FLAG_MARGIN for row in full["classes"].values()):
        return ("The full model itself tells no class apart by the flag's margin, so a probe trained the same way "
                "cannot show anything yet.")
    if probe["flagged"]:
        told = ", ".join(f"{cls} (AUC {_auc(probe['per_class']['classes'][cls])})" for cls in separated)
        if name == "metadata":
            carriers = [group for group, row in (probe.get("feature_groups") or {}).items() if row.get("flagged")]
            carried = f"; alone, these feature groups carry it: {', '.join(carriers)}" if carriers else ""
            return (f"Metadata alone tells {told} from the other classes{_recovered(probe, separated[0])}{carried}: "
                    "the classes differ in how their files were made or exposed, a shortcut any model can take."
                    + _accuracy_note(probe))
        hidden = _HIDDEN.get(name.removeprefix("linear-"), "part of every film hidden")
        model = "the DCNN" if probe.get("model_kind") == "dcnn" else "a linear model"
        return (f"With {hidden}, {model} still tells {told} from the other classes"
                f"{_recovered(probe, separated[0])}: what is left of the film carries the label, so a high score on "
                "this release does not show that a model reads the lungs." + _accuracy_note(probe))
    if best and ((best[1].get("auc_interval") or {}).get("low") or 0.0) > 0.5 + FLAG_MARGIN:
        return (f"{best[0]} AUC {_auc(best[1])} clears {0.5 + FLAG_MARGIN:.2f}, but from {best[1]['support']} test "
                "images of the class a bootstrap interval is not to be trusted: no flag, no conclusion; run it on more "
                "test images." + _too_few(probe))
    if best and best[1]["auc"] > 0.5 + FLAG_MARGIN:
        return (f"{best[0]} AUC {_auc(best[1])}, but the interval does not clear {0.5 + FLAG_MARGIN:.2f} at this "
                "size: no conclusion; run it on more test images." + _too_few(probe))
    return "No class is told apart beyond chance and noise." + _too_few(probe)


def _holdout_meaning(probe: dict[str, Any]) -> str:
    parts = []
    for source, entry in probe["sources"].items():
        held, seen_in = entry["held_out"], entry["in_distribution"]
        if entry.get("drop") is None:
            parts.append(f"{source}: {entry.get('note', 'not measured')}")
            continue
        parts.append(f"{source} held out: {_percent(held['recall'])} of its {held['n']} COVID-19 films found, against "
                     f"{_percent(seen_in['recall'])} of {seen_in['n']} from the sources it was trained on (drop "
                     f"{_percent(entry['drop'])}{_bracket(entry['drop_interval'])})"
                     + ("; **flagged**" if entry["flagged"] else ""))
    verdict = ("COVID-19 detection does not carry over to a source the model has not seen: it learned what the "
               "seen sources look like." if probe["flagged"] else
               "No held-out source loses more COVID-19 recall than the flag's margin and sampling noise allow.")
    return "; ".join(parts) + ". " + verdict


def probe_rows(certificate: dict[str, Any]) -> list[dict[str, Any]]:
    return _rows(certificate, (*_ORDER, "source", *_HOLDOUTS))


def _class_table(certificate: dict[str, Any]) -> list[str]:
    classes = _classes(certificate)
    metrics = certificate.get("metrics") or {}
    full = metrics.get("per_class_evidence")
    lines = ["| model | kind | sees | " + " | ".join(f"{c} AUC [95%]" for c in classes)
             + " | balanced accuracy [95%] | flagged |", "|---" * (len(classes) + 5) + "|"]
    recall_lines = ["| model | " + " | ".join(f"{c} recall" for c in classes)
                    + " | accuracy (majority-class rate) |", "|---" * (len(classes) + 2) + "|"]
    ran = [p for p in _rows(certificate, _ORDER) if p.get("status") == "ran" and p.get("majority_rate") is not None]
    majority = f" ({_percent(ran[0]['majority_rate'])})" if ran else ""
    if full:
        lines.append("| full model | DCNN | the whole film | " + " | ".join(_auc(full["classes"].get(c)) for c in classes)
                     + f" | {_percent(full['balanced_accuracy'])}{_bracket(full.get('balanced_accuracy_interval'))}"
                     " | (reference) |")
        recall_lines.append("| full model | " + " | ".join(_percent(full["classes"][c]["recall"]) for c in classes)
                            + f" | {_percent(metrics.get('accuracy'))}{majority} |")
    for probe in _rows(certificate, _ORDER):
        fraction = (probe.get("blanked") or {}).get("fraction", 0.7)
        sees = _WHAT_IT_SEES.get(probe["probe"], probe.get("title", "")).format(fraction=fraction)
        if probe.get("status") != "ran":
            lines.append(f"| {probe['probe']} | {_kind(probe)} | {sees} | " + " | ".join("–" for _ in classes)
                         + " | not run | – |")
            continue
        evidence = probe.get("per_class") or {"classes": {}}
        if probe.get("role") == "reference":
            flag = "(reference)"
        else:
            flag = f"**yes: {', '.join(probe['separated_classes'])}**" if probe["flagged"] else "no"
        lines.append(f"| {probe['probe']} | {_kind(probe)} | {sees} | "
                     + " | ".join(_auc(evidence["classes"].get(c)) for c in classes)
                     + f" | {_percent(probe.get('balanced_accuracy'))}{_bracket(evidence.get('balanced_accuracy_interval'))}"
                     f" | {flag} |")
        recall = probe.get("per_class_recall") or {}
        recall_lines.append(f"| {probe['probe']} | " + " | ".join(_percent(recall.get(c)) for c in classes)
                            + f" | {_percent(probe['accuracy'])} ({_percent(probe['majority_rate'])}) |")
    return lines + ["", "Per-class recall, and the overall accuracy against always answering the train split's "
                        "most common class (the old flag rule's yardstick):", ""] + recall_lines


def _metadata_table(probe: dict[str, Any], classes: list[str]) -> list[str]:
    groups = probe.get("feature_groups") or {}
    if probe.get("status") != "ran" or not groups:
        return []
    lines = ["", "Which metadata carries the signal (a linear probe on each feature group alone):", "",
             "| feature group | features | " + " | ".join(f"{c} AUC" for c in classes) + " | flagged |",
             "|---" * (len(classes) + 3) + "|"]
    for group, row in groups.items():
        flag = f"**yes: {', '.join(row['separated_classes'])}**" if row["flagged"] else "no"
        lines.append(f"| {group} | {', '.join(row['features'])} | "
                     + " | ".join(_auc(row["per_class"]["classes"].get(c)) for c in classes) + f" | {flag} |")
    return lines


def _holdout_table(certificate: dict[str, Any]) -> list[str]:
    rows = [p for p in _rows(certificate, _HOLDOUTS) if p.get("status") == "ran"]
    if not rows:
        return []
    lines = ["", "Source hold-out, COVID-19 (each source's COVID-19 films left out of training in turn):", "",
             "| held-out source | kind | held-out recall [95%] | in-distribution recall [95%] | recall when seen "
             "| drop [95%] | flagged |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for probe in rows:
        for source, entry in probe["sources"].items():
            held, inside, seen = entry["held_out"], entry["in_distribution"], entry.get("seen") or {}
            drop = "–" if entry.get("drop") is None else f"{_percent(entry['drop'])}{_bracket(entry['drop_interval'])}"
            lines.append(f"| {source} | {_kind(probe)} | {_percent(held['recall'])}{_bracket(held['interval'])} "
                         f"(n={held['n']}) | {_percent(inside['recall'])}{_bracket(inside['interval'])} (n={inside['n']}) "
                         f"| {_percent(seen.get('recall'))} (n={seen.get('n', 0)}) | {drop} "
                         f"| {'**yes**' if entry['flagged'] else 'no'} |")
    return lines


def shortcut_markdown(certificate: dict[str, Any], *, heading: str = HEADING) -> str:
    """The "Shortcut evidence" section of ``certificate`` (a certificate.json dict); "" if it ran no probe."""
    rows = probe_rows(certificate)
    if not rows:
        return ""
    dataset = certificate.get("dataset", {})
    config = (dataset.get("config") or {}).get("name", "paper")
    metrics = certificate.get("metrics", {})
    lines = [
        heading,
        "",
        f"Configuration `{config}`, fingerprint `{dataset.get('fingerprint', '?')}`; the full model "
        f"(recipe `{certificate.get('recipe', {}).get('name', '?')}`) scores {_percent(metrics.get('accuracy'))} on "
        f"{metrics.get('n', '?')} test images. Each probe sees one thing that should not tell the disease. Per class, "
        f"the one-vs-rest AUC with its 95% bootstrap interval (0.5 is chance); a probe is flagged when some class's "
        f"interval clears {0.5 + FLAG_MARGIN:.2f}. Kind `linear`: logistic regression on 32 x 32 thumbnails or on "
        "metadata, run on every certificate; `DCNN`: the recipe's network (opt-in, `--probes`).",
        "",
    ]
    lines += _class_table(certificate)
    metadata = (certificate.get("probes") or {}).get("metadata")
    if metadata:
        lines += _metadata_table(metadata, _classes(certificate))
    source = (certificate.get("probes") or {}).get("source")
    if source and source.get("status") == "ran" and source.get("per_class"):
        lines += ["", "Source probe, within COVID-19: " + ", ".join(
            f"{name} AUC {_auc(row)} (n={row['support']})" for name, row in source["per_class"]["classes"].items()) + "."]
    lines += _holdout_table(certificate)
    lines.append("")
    for probe in rows:
        lines.append(f"- **{probe['probe']}** ({_kind(probe)}): {meaning(probe, certificate)}")
    image_probes = [p for p in rows if p["probe"] in ("border", "lung") and p.get("status") == "ran"]
    epochs = sorted({p.get("epochs") for p in image_probes if p.get("epochs")})
    notes = []
    if epochs:
        recipe_epochs = image_probes[0].get("recipe_epochs")
        notes.append(f"DCNN probes trained {', '.join(map(str, epochs))} epoch(s) (the recipe: {recipe_epochs})"
                     + ("; a cheap run can miss a shortcut that a full-length one finds: a flag is evidence, "
                        "no flag is weaker evidence" if recipe_epochs and max(epochs) < recipe_epochs else ""))
    flag_rule = (certificate.get("probes_info") or {}).get("flag_rule")
    if flag_rule:
        notes.append(flag_rule)
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


# --- the dataset card -----------------------------------------------------------------------------


def committed_certificates(root: Path) -> Iterable[tuple[Path, dict[str, Any]]]:
    """(path, certificate) of every readable certificate.json under ``root`` (a manifest's ``certificates/``)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.rglob("certificate.json")):
        try:
            found.append((path, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            continue  # a broken file is not evidence; `cxr-dataset verify` is not about certificates
    return found


def find_certificate(fingerprint: str, root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest committed certificate with probes for the data of ``fingerprint``, or None."""
    matches = [(path, cert) for path, cert in committed_certificates(root)
               if cert.get("dataset", {}).get("fingerprint") == fingerprint and cert.get("probes")]
    if not matches:
        return None
    return max(matches, key=lambda item: item[1].get("created", ""))


def card_section(report: dict[str, Any], root: Path) -> str:
    """The card's "Shortcut evidence" section for the release whose build report is ``report``, from the
    certificates under ``root`` (the manifest folder's ``certificates/``)."""
    root = Path(root)
    lines = [HEADING, ""]
    fingerprints = stated_fingerprints(report)
    for config, fingerprint in fingerprints.items():
        found = find_certificate(fingerprint, root)
        if len(fingerprints) > 1:
            lines += [f"### Configuration `{config}`", ""]
        if found is None:
            lines += [
                f"No shortcut-probe certificate has been made yet for configuration `{config}` (fingerprint "
                f"`{fingerprint}`). Make one with `cxr-dataset baseline --data <this folder> --out <dir> --config "
                f"{config} --probes` and commit the output folder under `{CERTIFICATES_FOLDER}/` in the release's manifest "
                f"folder; until then, this "
                "release says nothing in numbers about how much of a model's accuracy a shortcut explains.",
                "",
            ]
            continue
        path, certificate = found
        # Named inside the manifest folder, never by this machine's path: the card must not depend on where it was built.
        try:
            where = Path(CERTIFICATES_FOLDER) / path.parent.relative_to(root)
        except ValueError:
            where = Path(CERTIFICATES_FOLDER) / path.parent.name
        body = shortcut_markdown(certificate, heading="").strip("\n")
        lines += [f"From the certificate in `{where}` ({certificate.get('created', 'undated')}, "
                  f"verdict `{certificate.get('verdict', '?')}`):", "", body, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def card_extra_section(report: dict[str, Any], root: Path) -> dict[str, str]:
    """:func:`card_section` as one of the card's extra sections (``{"title", "markdown"}``)."""
    markdown = card_section(report, root).strip().removeprefix(HEADING).strip()
    return {"title": HEADING.removeprefix("## "), "markdown": markdown}
