"""Display colour and SNOMED CT terminology of a structure, for bundles and Slicer segments.

Torch-free, so the Slicer module can name and colour segments before torch is installed.
"""

from __future__ import annotations

import json
from typing import Any


def _code(code: str, meaning: str) -> dict[str, str]:
    return {"scheme": "SCT", "code": code, "meaning": meaning}


_ANATOMY = _code("123037004", "Anatomical Structure")
_ALTERED = _code("49755003", "Morphologically Altered Structure")
_MASS = _code("4147007", "Mass")


def _anatomical(code: str, meaning: str) -> dict[str, Any]:
    """Terminology of an anatomical structure of SNOMED CT type ``code``, without modifier."""
    return {
        "category": _ANATOMY,
        "type": _code(code, meaning),
        "type_modifier": None,
        "anatomic_region": None,
    }


def _mass_in(code: str, meaning: str) -> dict[str, Any]:
    """Terminology of a mass (a tumour) in the organ of SNOMED CT type ``code``."""
    return {
        "category": _ALTERED,
        "type": _MASS,
        "type_modifier": None,
        "anatomic_region": _code(code, meaning),
    }


KNOWN_STRUCTURES: dict[str, dict[str, Any]] = {
    # Category/type codes as Slicer's "DICOM master list" terminology spells them
    # (SNOMED CT): Left atrium 82471001, Kidney 64033007, Liver 10200004 under
    # "Anatomical Structure" 123037004; tumours as "Mass" 4147007 under "Morphologically
    # Altered Structure" 49755003, with the organ as the anatomic region.
    "left atrium": {
        "color": [206 / 255, 110 / 255, 84 / 255],
        "terminology": _anatomical("82471001", "Left atrium"),
    },
    "kidney": {
        "color": [185 / 255, 102 / 255, 83 / 255],
        "terminology": _anatomical("64033007", "Kidney"),
    },
    "kidney tumor": {
        "color": [144 / 255, 238 / 255, 144 / 255],
        "terminology": _mass_in("64033007", "Kidney"),
    },
    # Hippocampus: SNOMED CT 5366007 "Hippocampal structure", with DICOM's code meaning
    # "Hippocampus". SNOMED CT has no well-known code for its anterior or posterior part, so
    # the Decathlon's two parts share that type (no modifier) and differ by name and colour.
    "hippocampus": {
        "color": [220 / 255, 216 / 255, 20 / 255],
        "terminology": _anatomical("5366007", "Hippocampus"),
    },
    "anterior hippocampus": {
        "color": [220 / 255, 216 / 255, 20 / 255],
        "terminology": _anatomical("5366007", "Hippocampus"),
    },
    "posterior hippocampus": {
        "color": [60 / 255, 150 / 255, 220 / 255],
        "terminology": _anatomical("5366007", "Hippocampus"),
    },
    "liver": {
        "color": [221 / 255, 130 / 255, 101 / 255],
        "terminology": _anatomical("10200004", "Liver"),
    },
    "liver tumor": {
        "color": [144 / 255, 238 / 255, 144 / 255],
        "terminology": _mass_in("10200004", "Liver"),
    },
}
"""Display colour (RGB, 0-1) and SNOMED CT terminology of the structures RADA was evaluated on.

Other names get a colour from :data:`FALLBACK_COLORS` and ``terminology: null``.
"""

_ALIASES = {
    "la": "left atrium",
    "left atrial": "left atrium",
    "kidney tumour": "kidney tumor",
    "liver tumour": "liver tumor",
    "kidneys": "kidney",
    "hippocampal structure": "hippocampus",
    "hippocampus anterior": "anterior hippocampus",
    "hippocampus posterior": "posterior hippocampus",
}

FALLBACK_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.35, 0.30),
    (0.30, 0.65, 0.90),
    (0.95, 0.80, 0.25),
    (0.55, 0.80, 0.40),
    (0.70, 0.45, 0.85),
    (0.95, 0.55, 0.20),
    (0.40, 0.85, 0.80),
    (0.85, 0.45, 0.65),
)


def normal_name(name: str) -> str:
    text = " ".join(str(name).replace("_", " ").split()).lower()
    return _ALIASES.get(text, text)


def class_entry(name: str, index: int = 1) -> dict[str, Any]:
    """The manifest entry of a class: name, colour and terminology (``None`` when unknown)."""
    known = KNOWN_STRUCTURES.get(normal_name(name))
    if known is not None:
        return {
            "name": str(name),
            "color": [float(c) for c in known["color"]],
            "terminology": json.loads(json.dumps(known["terminology"])),
        }
    color = FALLBACK_COLORS[(index - 1) % len(FALLBACK_COLORS)]
    return {"name": str(name), "color": [float(c) for c in color], "terminology": None}
