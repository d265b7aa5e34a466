"""Render the RADA Segment panel from its .ui file to a PNG, offscreen (no Slicer needed).

The picture is rendered from ``RADASegment/Resources/UI/RADASegment.ui``, not a screenshot of
Slicer: Slicer's own widget classes are swapped for plain Qt ones in a temporary copy of the
XML (ctkCollapsibleButton -> QGroupBox, qMRMLNodeComboBox -> QComboBox, ctkPathLineEdit ->
QLineEdit, qMRMLWidget -> QWidget), the training plot is a small painted stand-in, and the
cohort table and status line are filled with example values (a training run in progress).

Needs PySide6 (any environment; not Slicer's Python)::

    python3 -m venv /tmp/pyside && /tmp/pyside/bin/pip install PySide6-Essentials
    /tmp/pyside/bin/python Testing/Tools/render_panel.py            # -> Resources/Screenshots/panel.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[2]
UI_FILE = ROOT / "RADASegment" / "Resources" / "UI" / "RADASegment.ui"
OUTPUT = ROOT / "Resources" / "Screenshots" / "panel.png"

REPLACEMENTS = {
    "ctkCollapsibleButton": "QGroupBox",
    "qMRMLNodeComboBox": "QComboBox",
    "ctkPathLineEdit": "QLineEdit",
    "qMRMLWidget": "QWidget",
}
"""Slicer classes -> the plain Qt class drawn in their place (qMRMLPlotWidget is painted below)."""

EXAMPLE_ROWS = [
    ("case01", "✓ 42", "✓ 61", "✓ 37", "done", "—"),
    ("case02", "✓ 40", "✓ 58", "✓ 35", "done", "—"),
    ("case03", "✓ 44", "—", "—", "—", "—"),
    ("case04", "—", "—", "—", "—", "—"),
]


def _string_property(widget: ET.Element, name: str) -> str | None:
    prop = widget.find(f"property[@name='{name}']")
    return prop.findtext("string") if prop is not None else None


def _set_string_property(widget: ET.Element, name: str, value: str) -> None:
    prop = widget.find(f"property[@name='{name}']")
    if prop is None:
        prop = ET.SubElement(widget, "property", name=name)
    for child in list(prop):
        prop.remove(child)
    ET.SubElement(prop, "string").text = value


def _as_group_box(widget: ET.Element) -> None:
    """ctkCollapsibleButton: its text becomes a group box title, with a ▸/▾ marker."""
    collapsed = widget.find("property[@name='collapsed']")
    is_collapsed = collapsed is not None and collapsed.findtext("bool") == "true"
    title = _string_property(widget, "text") or ""
    for prop in widget.findall("property"):
        if prop.get("name") in ("text", "collapsed"):
            widget.remove(prop)
    _set_string_property(widget, "title", ("▸ " if is_collapsed else "▾ ") + title)
    if is_collapsed:
        for layout in widget.findall("layout"):
            widget.remove(layout)
        _set_string_property(widget, "styleSheet", "QGroupBox { min-height: 18px; }")


def _as_combo_box(widget: ET.Element) -> None:
    """qMRMLNodeComboBox: a plain combo box showing an example node name."""
    for prop in widget.findall("property"):
        if prop.get("name") not in ("toolTip", "enabled"):
            widget.remove(prop)
    item = ET.SubElement(widget, "item")
    text = "case03" if widget.get("name") == "volumeSelector" else "(whole volume)"
    ET.SubElement(ET.SubElement(item, "property", name="text"), "string").text = text


def _as_line_edit(widget: ET.Element) -> None:
    """ctkPathLineEdit: a line edit with a placeholder."""
    for prop in widget.findall("property[@name='nameFilters']"):
        widget.remove(prop)
    _set_string_property(widget, "placeholderText", "(none: download if allowed)")


REWRITES = {
    "ctkCollapsibleButton": _as_group_box,
    "qMRMLNodeComboBox": _as_combo_box,
    "ctkPathLineEdit": _as_line_edit,
}
"""Slicer classes whose properties are rewritten for the plain Qt class drawn in their place."""


def rewrite_ui(source: Path) -> str:
    """The .ui's XML with Slicer's classes replaced by plain Qt ones (see module docstring)."""
    tree = ET.parse(source)
    root = tree.getroot()
    for widget in root.iter("widget"):
        cls = widget.get("class")
        if cls in REWRITES:
            REWRITES[cls](widget)
        if cls in REPLACEMENTS:
            widget.set("class", REPLACEMENTS[cls])
    for custom in root.findall("customwidgets"):
        for entry in list(custom):
            if entry.findtext("class") in REPLACEMENTS:
                custom.remove(entry)
    for connections in root.findall("connections"):
        root.remove(connections)  # Slicer's mrmlSceneChanged signals do not exist here
    return ET.tostring(root, encoding="unicode")


def _plot_widget_class() -> type:
    """Stand-in for Slicer's qMRMLPlotWidget (a PySide6 class, made once PySide6 is imported)."""
    from PySide6.QtCore import QPointF, Qt
    from PySide6.QtGui import QColor, QPainter, QPen, QPolygonF
    from PySide6.QtWidgets import QFrame

    class qMRMLPlotWidget(QFrame):  # noqa: N801 - the .ui's class name
        """Stand-in for Slicer's plot view: an example loss (red) and Dice (blue) curve."""

        def __init__(self, parent=None):
            super().__init__(parent)
            self.setFrameShape(QFrame.StyledPanel)

        def paintEvent(self, event):
            super().paintEvent(event)
            painter = QPainter(self)
            painter.setRenderHint(QPainter.Antialiasing)
            area = self.rect().adjusted(34, 10, -10, -22)
            painter.fillRect(self.rect().adjusted(1, 1, -1, -1), QColor("white"))
            painter.setPen(QPen(QColor("#999999"), 1))
            painter.drawLine(area.bottomLeft(), area.bottomRight())
            painter.drawLine(area.bottomLeft(), area.topLeft())
            painter.setPen(QColor("#555555"))
            painter.drawText(
                self.rect().adjusted(0, 0, 0, -4), Qt.AlignHCenter | Qt.AlignBottom, "iteration"
            )
            painter.drawText(4, area.top() + 10, "1.0")
            painter.drawText(4, area.bottom(), "0")
            steps = 60
            loss = [0.95 * (0.35 + 0.65 * 0.93**i) for i in range(steps)]
            dice = [0.82 * (1 - 0.9 ** (i + 1)) for i in range(0, steps, 5)]
            for values, color, every in ((loss, "#d94c40", 1), (dice, "#3380d9", 5)):
                painter.setPen(QPen(QColor(color), 2))
                points = [
                    QPointF(
                        area.left() + area.width() * (i * every) / (steps * 1.6),
                        area.bottom() - area.height() * v,
                    )
                    for i, v in enumerate(values)
                ]
                painter.drawPolyline(QPolygonF(points))
            painter.setPen(QColor("#d94c40"))
            painter.drawText(area.right() - 70, area.top() + 12, "loss")
            painter.setPen(QColor("#3380d9"))
            painter.drawText(area.right() - 70, area.top() + 26, "Dice")
            painter.end()

    return qMRMLPlotWidget


def _load_panel(ui: Path) -> tuple[object, object]:
    """The panel built from the rewritten .ui (None when it cannot load), and the loader."""
    from PySide6.QtCore import QFile, QIODevice
    from PySide6.QtUiTools import QUiLoader

    with tempfile.TemporaryDirectory() as folder:
        plain_ui = Path(folder) / "panel.ui"
        plain_ui.write_text(rewrite_ui(ui), encoding="utf-8")
        loader = QUiLoader()
        loader.registerCustomWidget(_plot_widget_class())
        qfile = QFile(str(plain_ui))
        qfile.open(QIODevice.ReadOnly)
        panel = loader.load(qfile)
        qfile.close()
    return panel, loader


def _fill_cohort_table(table) -> None:
    """The example rows, the third selected, sized to show every row without scrolling."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidgetItem

    table.setRowCount(len(EXAMPLE_ROWS))
    for row, values in enumerate(EXAMPLE_ROWS):
        for column, text in enumerate(values):
            item = QTableWidgetItem(text)
            item.setTextAlignment(Qt.AlignCenter if column else Qt.AlignLeft | Qt.AlignVCenter)
            table.setItem(row, column, item)
    table.selectRow(2)
    table.setSelectionBehavior(QAbstractItemView.SelectRows)
    font = table.font()
    font.setPointSizeF(font.pointSizeF() * 0.85)
    table.setFont(font)
    table.horizontalHeader().setFont(font)
    table.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    table.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    table.resizeRowsToContents()
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeToContents)
    header.setSectionResizeMode(0, QHeaderView.Stretch)
    table.setFixedHeight(
        header.sizeHint().height()
        + sum(table.rowHeight(r) for r in range(table.rowCount()))
        + 2 * table.frameWidth()
    )


def _show_training_in_progress(child) -> None:
    """Example settings, and the panel as it looks while a training run is in progress."""
    child("structureNameLineEdit").setText("left atrium")
    child("planeStatusLabel").setText(
        "case03: still to mark: coronal, axial (marked: sagittal 44)."
    )
    child("deviceWarningLabel").setText("CUDA GPU found: training runs on it.")
    child("modelNameLineEdit").setText("la-model")
    child("modelComboBox").addItem("la-small (left atrium)")
    child("visionWeightsPathLineEdit").setText("~/models/alpha-clip-b16.pth")
    child("trainButton").setText("Cancel")
    for name in (
        "addVolumeButton",
        "addAllVolumesButton",
        "addFolderButton",
        "loadSampleCohortButton",
        "removeVolumeButton",
        "annotateButton",
        "propagateButton",
        "segmentSelectedButton",
        "segmentCohortButton",
        "refreshModelsButton",
    ):
        child(name).setEnabled(False)
    progress = child("progressBar")
    progress.setRange(0, 6000)
    progress.setValue(1200)
    child("statusLabel").setText("train: 1200/6000, loss 0.41, dice 0.78, ETA 1h12m")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", type=Path, default=UI_FILE)
    parser.add_argument("--out", type=Path, default=OUTPUT)
    parser.add_argument("--width", type=int, default=420)
    args = parser.parse_args(argv)

    from PySide6.QtWidgets import QApplication, QWidget

    app = QApplication.instance() or QApplication(sys.argv[:1])
    panel, loader = _load_panel(args.ui)
    if panel is None:
        print(f"could not load {args.ui}: {loader.errorString()}", file=sys.stderr)
        return 1

    def child(name):
        found = panel.findChild(QWidget, name)
        if found is None:
            raise SystemExit(f"{args.ui} has no widget {name!r}")
        return found

    _fill_cohort_table(child("cohortTable"))
    _show_training_in_progress(child)

    panel.setFixedWidth(args.width)
    panel.adjustSize()
    panel.resize(args.width, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(args.out)):
        print(f"could not write {args.out}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({panel.width()}x{panel.height()} px), rendered from {args.ui.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
