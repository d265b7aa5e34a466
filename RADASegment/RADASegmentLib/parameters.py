"""The panel's settings as one validated dataclass, stored in the module's parameter node."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

PRESETS = ("auto", "cpu", "paper", "small")
DEVICES = ("auto", "cuda", "cpu")
STRIDES = ("model", "fast", "dense", "whole")
FUSIONS = ("weighted", "majority")
LARGEST_COMPONENT = ("auto", "on", "off")
TRAINING_LABELS = ("views", "fused")
OWN_FIELDS = {"iterations": "Iterations", "device": "Device", "label_source": "Training labels"}
"""Training settings the panel sets with a field of their own (not through Extra settings)."""
_SETTING = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?=\S+")
PARAMETER_KEY = "RADASegmentSettings"
"""Name of the parameter-node entry that holds the settings as JSON."""


@dataclass
class RADASegmentSettings:
    """What the user chooses in the panel (also the console API's keyword defaults).

    ``structureName``: the structure segmented, or several separated by commas
    (``"left atrium, right atrium"``): class 1, 2, ... in that order, one painted segment each.

    ``preset`` ``auto`` trains with ``paper`` on a CUDA GPU, else with ``cpu`` (the engine
    decides, ``rada train --preset auto``).
    ``iterations`` 0 means the preset's own count. ``device`` ``auto``
    trains on CUDA when present, else on CPU (with a warning; the time left shows once training
    runs).
    ``largestComponent``: keep only the largest connected region of the segmented structure
    (``on``), every region (``off``), or as the model recommends (``auto``: on for structures
    that were one region in its training pseudo-labels).
    ``trainingLabels``: ``views`` (the paper: each view's network learns its own pseudo-label with
    decaying weights) or ``fused`` (every network learns the fused pseudo-label with weight 1,
    ``rada train --set label_source=fused``: for a cohort where every volume is annotated).
    ``extraSettings``: any other training setting, ``KEY=VALUE`` separated by spaces, passed to
    ``rada train --set`` (e.g. ``schedule.alpha_floor=0.9 network.base_filters=8``); the engine
    checks the names and values when training starts.
    """

    structureName: str = "structure"
    preset: str = "auto"
    iterations: int = 0
    device: str = "auto"
    visionWeights: str = ""
    textWeights: str = ""
    allowDownload: bool = False
    modelName: str = "rada-model"
    stride: str = "model"
    largestComponent: str = "auto"
    fusion: str = "weighted"
    trainingLabels: str = "views"
    extraSettings: str = ""
    workers: int = 0

    def validate(self) -> RADASegmentSettings:
        """Return self, or raise ValueError with a one-line message naming the bad setting."""
        self.structureNames()
        for name, value, allowed in (
            ("preset", self.preset, PRESETS),
            ("device", self.device, DEVICES),
            ("stride", self.stride, STRIDES),
            ("fusion", self.fusion, FUSIONS),
            ("largest component", self.largestComponent, LARGEST_COMPONENT),
            ("training labels", self.trainingLabels, TRAINING_LABELS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        self.extra_settings()
        if int(self.iterations) < 0:
            raise ValueError(f"iterations must be 0 (the preset's) or more, got {self.iterations}")
        if int(self.workers) < 0:
            raise ValueError(f"workers must be 0 (one per core) or more, got {self.workers}")
        name = self.modelName.strip()
        if not name or name.startswith(".") or any(c in name for c in '/\\:*?"<>|'):
            raise ValueError(
                f"model name {self.modelName!r} cannot be a folder name: use letters, digits, '-' and '_'"
            )
        return self

    def structureNames(self) -> list[str]:
        """The cohort's structures in class order (class 1 first), or ValueError naming the problem.

        ``structureName`` holds one name, or several separated by commas; a name given twice
        (whatever its case: Slicer finds segments by name without case) is refused.
        """
        if not self.structureName.strip():
            raise ValueError(
                "structure name is empty: name the structure you segment (e.g. 'left atrium')"
            )
        names = [n.strip() for n in self.structureName.split(",")]
        if not all(names):
            raise ValueError(
                f"structure names {self.structureName!r} hold an empty name: separate names with one comma"
            )
        seen: set[str] = set()
        for name in names:
            if name.lower() in seen:
                raise ValueError(f"structure '{name}' is named twice: name each structure once")
            seen.add(name.lower())
        return names

    def extra_settings(self) -> list[str]:
        """The ``KEY=VALUE`` items of ``extraSettings``, or ValueError naming the first bad one."""
        items = self.extraSettings.split()
        for item in items:
            if not _SETTING.fullmatch(item):
                raise ValueError(
                    f"extra setting {item!r} is not KEY=VALUE (e.g. schedule.alpha_floor=0.9)"
                )
            key = item.split("=", 1)[0]
            if key in OWN_FIELDS:
                raise ValueError(
                    f"extra setting {item!r}: set {key} with the {OWN_FIELDS[key]} field instead"
                )
        return items

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> RADASegmentSettings:
        """Settings from JSON; unknown keys are ignored and missing ones take their defaults."""
        if not text:
            return cls()
        try:
            values: dict[str, Any] = json.loads(text)
        except ValueError:
            return cls()
        known = {f.name: f.type for f in fields(cls)}
        if isinstance(
            values.get("largestComponent"), bool
        ):  # a checkbox before: ticked = on, else the model's choice
            values["largestComponent"] = "on" if values["largestComponent"] else "auto"
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_parameter_node(cls, node: Any) -> RADASegmentSettings:
        """Read the settings a ``vtkMRMLScriptedModuleNode`` holds (defaults where it holds none)."""
        return cls.from_json(node.GetParameter(PARAMETER_KEY) if node is not None else None)

    def to_parameter_node(self, node: Any) -> None:
        """Store the settings in a ``vtkMRMLScriptedModuleNode`` (saved with the scene)."""
        node.SetParameter(PARAMETER_KEY, self.to_json())
