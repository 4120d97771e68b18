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

from .release import stated_fingerprints

FLAG_MARGIN = 0.10
"""A probe is flagged when its accuracy interval's lower end clears the majority-class rate by this much."""

CERTIFICATES_FOLDER = "certificates"
"""Where a release's certificates live, inside its manifest folder (``builder_manifests/<name>/<version>/``)."""

HEADING = "## Shortcut evidence"

_WHAT_IT_SEES = {
    "border": "only the outer border of each film (centre {fraction:.0%} box blanked)",
    "lung": "each film with a centred ellipse ({fraction:.0%} of each side) blanked",
    "source": "24 x 24 thumbnails of the COVID-19 images, predicting their source",
    "metadata": "image size, aspect, file format and intensity statistics only",
}


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _interval(probe: dict[str, Any]) -> str:
    interval = probe.get("accuracy_interval") or {}
    if interval.get("low") is None:
        return ""
    return f" [{_percent(interval['low'])}, {_percent(interval['high'])}]"


def _undecided(probe: dict[str, Any]) -> bool:
    """Not flagged, yet above the majority-class rate by more than the flag margin: too few test images to say."""
    interval = probe.get("accuracy_interval") or {}
    return (not probe["flagged"] and interval.get("low") is not None
            and probe["accuracy"] - probe["majority_rate"] > FLAG_MARGIN)


def meaning(probe: dict[str, Any], model_accuracy: float | None = None) -> str:
    """One plain sentence on what a probe's result means."""
    name = probe["probe"]
    if probe.get("status") != "ran":
        return f"Not run: {probe.get('reason', 'no reason recorded')}."
    accuracy, rate = _percent(probe["accuracy"]), _percent(probe["majority_rate"])
    share = probe.get("share_of_model_gain")
    share_text = (f"; that is {share:.0%} of the full model's gain over the majority-class rate" if share is not None
                  else "")
    if _undecided(probe):
        return (f"It scores {accuracy} against a majority-class rate of {rate}, but with {probe['n_test']} test images "
                f"its interval{_interval(probe)} does not clear the rate by the flag's margin: no conclusion at "
                "this size; run it on more test images.")
    if name in ("border", "lung"):
        if not probe["flagged"] and model_accuracy is not None and model_accuracy - probe["majority_rate"] <= FLAG_MARGIN:
            return (f"The full model itself scores {_percent(model_accuracy)} against a majority-class rate of {rate}, "
                    f"so a probe trained the same way ({accuracy}) cannot show anything yet.")
        if probe["flagged"]:
            return (f"With the centre of every film blanked the model still scores {accuracy} against a majority-class "
                    f"rate of {rate}{share_text}: borders, burned-in text, markers and collimation carry the label, so "
                    "a high score on this release does not show that a model reads the lungs.")
        return (f"With the centre blanked the model scores {accuracy} against a majority-class rate of {rate}: "
                "the borders alone do not give the label away beyond chance and noise.")
    if name == "source":
        if probe["flagged"]:
            return (f"Among COVID-19 films a linear model on thumbnails names the source {accuracy} of the time "
                    f"(majority source: {rate}): each source has its own look, and where classes come from different "
                    "sources a model can learn the source instead of the disease.")
        return (f"Among COVID-19 films a linear model on thumbnails names the source {accuracy} of the time "
                f"(majority source: {rate}): no source signature beyond chance at this resolution.")
    if probe["flagged"]:
        return (f"Image size, format and intensity alone predict the label {accuracy} of the time (majority-class rate "
                f"{rate}){share_text}: the classes differ in how their files were made, a shortcut any model can take.")
    return (f"Image size, format and intensity alone predict the label {accuracy} of the time (majority-class rate "
            f"{rate}): metadata does not give the label away beyond chance and noise.")


def probe_rows(certificate: dict[str, Any]) -> list[dict[str, Any]]:
    probes = certificate.get("probes") or {}
    return [probes[name] for name in ("border", "lung", "source", "metadata") if name in probes]


def shortcut_markdown(certificate: dict[str, Any], *, heading: str = HEADING) -> str:
    """The "Shortcut evidence" section of ``certificate`` (a certificate.json dict); "" if it ran no probe."""
    rows = probe_rows(certificate)
    if not rows:
        return ""
    dataset = certificate.get("dataset", {})
    config = (dataset.get("config") or {}).get("name", "paper")
    metrics = certificate.get("metrics", {})
    model_accuracy = metrics.get("accuracy")
    probes_info = certificate.get("probes_info", {})
    lines = [
        heading,
        "",
        f"Configuration `{config}`, fingerprint `{dataset.get('fingerprint', '?')}`; the full model "
        f"(recipe `{certificate.get('recipe', {}).get('name', '?')}`) scores {_percent(model_accuracy)} on "
        f"{metrics.get('n', '?')} test images. Each probe sees one thing that should not tell the disease; "
        "accuracy with its 95% Wilson interval, against always answering the train split's most common class.",
        "",
        "| probe | sees | test accuracy [95%] | majority-class rate | flagged |",
        "| --- | --- | --- | --- | --- |",
    ]
    for probe in rows:
        fraction = (probe.get("blanked") or {}).get("fraction", 0.7)
        sees = _WHAT_IT_SEES.get(probe["probe"], probe.get("title", "")).format(fraction=fraction)
        if probe.get("status") != "ran":
            lines.append(f"| {probe['probe']} | {sees} | not run | – | – |")
            continue
        flag = "**yes: shortcut**" if probe["flagged"] else "no"
        lines.append(f"| {probe['probe']} | {sees} | {_percent(probe['accuracy'])}{_interval(probe)} "
                     f"| {_percent(probe['majority_rate'])} ({probe['majority_class']}) | {flag} |")
    lines.append("")
    for probe in rows:
        lines.append(f"- **{probe['probe']}**: {meaning(probe, model_accuracy)}")
    image_probes = [p for p in rows if p["probe"] in ("border", "lung") and p.get("status") == "ran"]
    if image_probes and metrics.get("per_class"):
        classes = list(metrics["per_class"])
        lines += ["", "Per-class recall, full model beside the image probes:", "",
                  "| model | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|",
                  "| full model | " + " | ".join(_percent(metrics["per_class"][c]["recall"]) for c in classes) + " |"]
        for probe in image_probes:
            recall = probe.get("per_class_recall", {})
            lines.append(f"| {probe['probe']} probe | " + " | ".join(_percent(recall.get(c)) for c in classes) + " |")
    epochs = sorted({p.get("epochs") for p in image_probes if p.get("epochs")})
    notes = []
    if epochs:
        recipe_epochs = image_probes[0].get("recipe_epochs")
        notes.append(f"image probes trained {', '.join(map(str, epochs))} epoch(s) (the recipe: {recipe_epochs})"
                     + ("; a cheap run can miss a shortcut that a full-length one finds: a flag is evidence, "
                        "no flag is weaker evidence" if recipe_epochs and max(epochs) < recipe_epochs else ""))
    if probes_info.get("flag_rule"):
        notes.append(probes_info["flag_rule"])
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
