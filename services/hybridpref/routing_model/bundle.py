"""The predictor's model bundle: a folder of plain files, versioned by content hash.

Layout (format ``hybridpref-predictor-bundle/1``):

* ``model.onnx``        the PPM; inputs ``counts`` float32 [batch, V], ``pool_size`` float32 [1];
                        output ``score`` float32 [batch]
* ``ppm.json``          the same PPM's quadratic form in float64 (bias, linear (V,), quad (V, V)),
                        for in-process greedy routing; checked against the ONNX model on load
* ``vocabulary.json``   {"version", "tags"}: must equal ``hybridpref.common.vocabulary``
* ``reference_bins.json`` the tagger's reference bin edges the tags were computed with
* ``metrics.json``      fit metrics of every PPM variant, proxy and diagnostics figures
* ``fingerprints.json`` sha256 of the data files and the build arguments
* ``MODEL_CARD.md``     what the model is, how to rebuild it, its limits
* optional (bundles built before them still load):
  ``correction.onnx``  the expected-correction model (input ``features`` float32 [N, F], output
                       ``p_wrong`` float32 [N, 2]; :mod:`hybridpref.routing_model.correction`)
  ``correction.json``  its feature names, version and leave-one-pool-out metrics (AUROC, ECE,
                       reliability curve)
  ``domain.json``      per training pool the mean / sd of the domain features, the pools the PPM was
                       trained on, the batch distance and its calibrated threshold
                       (:mod:`hybridpref.routing_model.domain`)
  ``panel_correction.json`` the panel-invariant, monotone correction model (issue 19; pure numpy,
                       :mod:`hybridpref.routing_model.panel_correction`): where present, ``hybrid``
                       reads P(LM wrong) from it instead of ``correction.onnx``
* ``manifest.json``     sha256 of every file above and ``bundle_version`` = hash over them

Every file is written deterministically (sorted JSON keys, no timestamps), so the same build
inputs and seed give the same ``bundle_version``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hybridpref_client.core.errors import NotReady

FORMAT = "hybridpref-predictor-bundle/1"
MANIFEST = "manifest.json"
REQUIRED_FILES = (
    "model.onnx",
    "ppm.json",
    "vocabulary.json",
    "reference_bins.json",
    "metrics.json",
    "fingerprints.json",
    "MODEL_CARD.md",
)
OPTIONAL_FILES = ("correction.onnx", "correction.json", "domain.json", "panel_correction.json")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def finalise(folder: Path, extra: dict[str, Any]) -> str:
    """Hash every required file (and the optional ones present), write ``manifest.json``; returns the bundle version."""
    files = {name: sha256_file(folder / name) for name in REQUIRED_FILES}
    files.update({name: sha256_file(folder / name) for name in OPTIONAL_FILES if (folder / name).is_file()})
    digest = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
    version = f"ppm-{digest[:16]}"
    write_json(folder / MANIFEST, {"format": FORMAT, "bundle_version": version, "files": files, **extra})
    return version


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read and verify a bundle folder; raises ``NotReady`` with the reason when it is unusable."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise NotReady(f"no predictor bundle at {folder}: {MANIFEST} missing")
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise NotReady(f"bundle {folder}: unreadable {MANIFEST}: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise NotReady(f"bundle {folder}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for name in REQUIRED_FILES:
        path = folder / name
        if not path.is_file():
            raise NotReady(f"bundle {folder}: {name} missing")
        if sha256_file(path) != manifest.get("files", {}).get(name):
            raise NotReady(f"bundle {folder}: {name} does not match its manifest hash (corrupt or edited)")
    for name in OPTIONAL_FILES:
        if name not in manifest.get("files", {}):
            continue
        path = folder / name
        if not path.is_file() or sha256_file(path) != manifest["files"][name]:
            raise NotReady(f"bundle {folder}: {name} is missing or does not match its manifest hash")
    checked: dict[str, Any] = manifest
    return checked


def read_json(folder: Path, name: str) -> Any:
    return json.loads((Path(folder) / name).read_text(encoding="utf-8"))


def read_correction(folder: Path) -> tuple[bytes, dict[str, Any]] | None:
    """(``correction.onnx`` bytes, ``correction.json``) of a verified bundle, or None when it has none."""
    folder = Path(folder)
    if not (folder / "correction.onnx").is_file():
        return None
    return (folder / "correction.onnx").read_bytes(), read_json(folder, "correction.json")


def read_domain(folder: Path) -> dict[str, Any] | None:
    """``domain.json`` of a bundle, or None when it has none (bundles built before it)."""
    folder = Path(folder)
    return read_json(folder, "domain.json") if (folder / "domain.json").is_file() else None
