"""A small fake of what the real Slicer application adds to ``slicer-core``.

The real application does not run in these tests; what that leaves unchecked is listed in
docs/slicer.md ("What was never run for real"), the tests' layout in docs/development.md.

``slicer-core`` gives the real MRML scene, nodes, logics and ``slicer.util``; it lacks the Qt
parts. :func:`install` adds fakes of ``slicer.ScriptedLoadableModule`` (module, widget, logic
and test base classes) so the module's code runs unchanged in pytest.

:func:`install_qt` adds, for the panel's tests, a fake ``qt`` and ``ctk`` (the widgets the
panel uses, with PythonQt's ``obj.connect('signal(args)', slot)`` connections and properties
read as attributes), fake qMRML widgets on ``slicer``, a fake ``slicer.app``, and recorders in
place of ``slicer.util.errorDisplay`` / ``selectModule``. ``qt.QUiLoader`` builds these fakes
from the real ``.ui`` XML, so Slicer's own ``slicer.util.loadUI`` and ``childWidgetVariables``
run unchanged. :func:`uninstall_qt` takes all of it away again. Timers never fire by
themselves: :func:`process_timers` (or ``timer.fire()``) stands for time passing.
"""

from __future__ import annotations

import inspect
import sys
import types
import unittest
import weakref
import xml.etree.ElementTree as ET


def qt_property(name: str) -> property:
    """A Qt property read as an attribute: ``self._<name>``, written through ``set<Name>``."""
    setter = "set" + name[0].upper() + name[1:]
    return property(
        lambda self: getattr(self, f"_{name}"), lambda self, v: getattr(self, setter)(v)
    )


class ScriptedLoadableModule:
    """Stands in for Slicer's base: keeps ``parent`` and its title/categories."""

    def __init__(self, parent=None):
        self.parent = parent if parent is not None else types.SimpleNamespace()
        self.moduleName = type(self).__name__


class _ModuleLayout:
    """Stands for ``self.layout`` of a module widget: remembers the widgets added to it."""

    def __init__(self):
        self.widgets = []

    def addWidget(self, widget, *args):
        self.widgets.append(widget)

    def addStretch(self, *args):
        pass


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = (
            type(self).__name__[: -len("Widget")]
            if type(self).__name__.endswith("Widget")
            else type(self).__name__
        )
        self.developerMode = False
        layout = getattr(parent, "layout", None)
        self.layout = layout() if callable(layout) else _ModuleLayout()

    def setup(self):
        pass

    def cleanup(self):
        pass

    def enter(self):
        pass

    def exit(self):
        pass

    def resourcePath(self, filename):
        """``<module folder>/Resources/filename``, like Slicer: the folder holding ``<moduleName>.py``.

        The widget class may live in a sub-package (``RADASegmentLib/widget.py``): the folders
        above its file are searched for ``<moduleName>.py``, then for a ``Resources`` folder.
        """
        import os

        module = sys.modules[type(self).__module__]
        here = os.path.dirname(os.path.abspath(module.__file__))
        folders = [here]
        while os.path.dirname(folders[-1]) != folders[-1] and len(folders) < 4:
            folders.append(os.path.dirname(folders[-1]))
        for test in (
            lambda f: os.path.isfile(os.path.join(f, self.moduleName + ".py")),
            lambda f: os.path.isdir(os.path.join(f, "Resources")),
        ):
            for folder in folders:
                if test(folder):
                    return os.path.join(folder, "Resources", filename)
        return os.path.join(here, "Resources", filename)


class ScriptedLoadableModuleLogic:
    """Like Slicer's: ``getParameterNode()`` returns the module's singleton parameter node."""

    def __init__(self, parent=None):
        name = type(self).__name__
        self.moduleName = name[: -len("Logic")] if name.endswith("Logic") else name

    def getParameterNode(self):
        import slicer

        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetName(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=0):
        print(message)

    def runTest(self):  # the real base calls the subclass's runTest
        pass


def install() -> types.ModuleType:
    """Register ``slicer.ScriptedLoadableModule`` (fake) on the real ``slicer`` package."""
    import slicer

    if "slicer.ScriptedLoadableModule" not in sys.modules:
        module = types.ModuleType("slicer.ScriptedLoadableModule")
        for cls in (
            ScriptedLoadableModule,
            ScriptedLoadableModuleWidget,
            ScriptedLoadableModuleLogic,
            ScriptedLoadableModuleTest,
        ):
            setattr(module, cls.__name__, cls)
        module.__all__ = [
            cls.__name__
            for cls in (
                ScriptedLoadableModule,
                ScriptedLoadableModuleWidget,
                ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest,
            )
        ]
        sys.modules["slicer.ScriptedLoadableModule"] = module
        slicer.ScriptedLoadableModule = module
    return sys.modules["slicer.ScriptedLoadableModule"]


# --------------------------------------------------------------------------------------------
# Fake qt / ctk / qMRML widgets for the panel's tests (install_qt)
# --------------------------------------------------------------------------------------------


def _call_slot(slot, args):
    """Call ``slot`` as PythonQt does: with as many of the signal's arguments as it accepts."""
    try:
        parameters = list(inspect.signature(slot).parameters.values())
    except (TypeError, ValueError):
        return slot(*args)
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return slot(*args)
    count = sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    return slot(*args[:count])


class FakeQObject:
    """QObject: object name (``name`` too, as PythonQt), children, dynamic properties, signals.

    ``connect(signature, slot)`` accepts only the signatures the class declares in ``SIGNALS``
    (a typo fails the test instead of silently never firing, as PythonQt would).
    """

    SIGNALS = frozenset({"destroyed()", "destroyed(QObject*)", "objectNameChanged(QString)"})

    def __init__(self, parent=None):
        self._connections: dict[str, list] = {}
        self._blocked = False
        self._objectName = ""
        self._children: list = []
        self._parent = None
        self._dynamic: dict = {}
        if parent is not None:
            self.setParent(parent)

    # --- identity and tree
    @classmethod
    def signals(cls) -> set:
        found = set()
        for klass in cls.__mro__:
            found |= set(getattr(klass, "SIGNALS", ()))
        return found

    def className(self) -> str:
        return getattr(type(self), "QT_CLASS", type(self).__name__)

    objectName = qt_property("objectName")
    name = objectName

    def setObjectName(self, name):
        self._objectName = str(name)

    def setParent(self, parent):
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self) -> list:
        return list(self._children)

    def property(self, name):
        return self._dynamic.get(name)

    def setProperty(self, name, value):
        self._dynamic[name] = value
        return False

    # --- signals
    def connect(self, signal, slot) -> bool:
        if signal not in self.signals():
            raise AttributeError(
                f"{self.className()} has no signal {signal!r} (known: {sorted(self.signals())})"
            )
        if not callable(slot):
            raise TypeError(f"slot for {signal!r} is not callable: {slot!r}")
        self._connections.setdefault(signal, []).append(slot)
        return True

    def disconnect(self, signal, slot=None) -> bool:
        slots = self._connections.get(signal, [])
        if slot is None:
            slots.clear()
            return True
        if slot in slots:
            slots.remove(slot)
            return True
        return False

    def connectedSlots(self, signal) -> list:
        """Test helper: the slots connected to ``signal``."""
        return list(self._connections.get(signal, []))

    def emitSignal(self, signal, *args):
        """Emit ``signal`` (unless signals are blocked), calling the connected slots in order."""
        if signal not in self.signals():
            raise AttributeError(f"{self.className()} has no signal {signal!r}")
        if self._blocked:
            return
        for slot in list(self._connections.get(signal, [])):
            _call_slot(slot, args)

    def blockSignals(self, block) -> bool:
        previous, self._blocked = self._blocked, bool(block)
        return previous

    def signalsBlocked(self) -> bool:
        return self._blocked

    def deleteLater(self):
        pass


class FakeQLayout:
    """A layout: only what ``self.layout.addWidget`` and the loader need."""

    def __init__(self, parent=None):
        self.widgets = []
        if isinstance(parent, FakeQWidget):
            parent.setLayout(self)

    def addWidget(self, widget, *args):
        self.widgets.append(widget)

    def addLayout(self, layout, *args):
        pass

    def addStretch(self, *args):
        pass

    def addRow(self, *args):
        self.widgets.extend(a for a in args if isinstance(a, FakeQWidget))


class FakeQWidget(FakeQObject):
    """QWidget: enabled, visible, toolTip, a layout."""

    QT_CLASS = "QWidget"

    def __init__(self, parent=None):
        super().__init__(parent)
        self._enabled = True
        self._visible = True
        self._toolTip = ""
        self._layout = None

    enabled = qt_property("enabled")
    visible = qt_property("visible")
    toolTip = qt_property("toolTip")

    def setEnabled(self, enabled):
        self._enabled = bool(enabled)

    def setDisabled(self, disabled):
        self._enabled = not disabled

    def isEnabled(self) -> bool:
        return self._enabled

    def setVisible(self, visible):
        self._visible = bool(visible)

    def show(self):
        self._visible = True

    def hide(self):
        self._visible = False

    def isVisible(self) -> bool:
        return self._visible

    def setToolTip(self, text):
        self._toolTip = str(text)

    def setLayout(self, layout):
        self._layout = layout

    def layout(self):
        return self._layout


class FakeQFrame(FakeQWidget):
    QT_CLASS = "QFrame"


class FakeQGroupBox(FakeQWidget):
    QT_CLASS = "QGroupBox"

    def __init__(self, parent=None):
        super().__init__(parent)
        self._title = ""

    title = qt_property("title")

    def setTitle(self, title):
        self._title = str(title)


class FakeQLabel(FakeQWidget):
    QT_CLASS = "QLabel"

    def __init__(self, text="", parent=None):
        super().__init__(parent)
        self._text = str(text)
        self._wordWrap = False

    text = qt_property("text")
    wordWrap = qt_property("wordWrap")

    def setText(self, text):
        self._text = str(text)

    def setWordWrap(self, on):
        self._wordWrap = bool(on)


class FakeQAbstractButton(FakeQWidget):
    """A button: ``click()`` does what a mouse click does (nothing when disabled)."""

    QT_CLASS = "QAbstractButton"
    SIGNALS = frozenset({"clicked()", "clicked(bool)", "toggled(bool)", "pressed()", "released()"})

    def __init__(self, text="", parent=None):
        super().__init__(parent)
        self._text = str(text)
        self._checkable = False
        self._checked = False

    text = qt_property("text")
    checkable = qt_property("checkable")
    checked = qt_property("checked")

    def setText(self, text):
        self._text = str(text)

    def setCheckable(self, on):
        self._checkable = bool(on)

    def isCheckable(self) -> bool:
        return self._checkable

    def setChecked(self, checked):
        checked = bool(checked)
        if not self._checkable or checked == self._checked:
            return
        self._checked = checked
        self._onToggled(checked)
        self.emitSignal("toggled(bool)", checked)

    def _onToggled(self, checked):
        pass

    def isChecked(self) -> bool:
        return self._checked

    def toggle(self):
        self.setChecked(not self._checked)

    def click(self):
        if not self._enabled or not self._visible:
            return
        self.emitSignal("pressed()")
        self.emitSignal("released()")
        if self._checkable:
            self.setChecked(not self._checked)
        self.emitSignal("clicked(bool)", self._checked)
        self.emitSignal("clicked()")


class FakeQPushButton(FakeQAbstractButton):
    QT_CLASS = "QPushButton"


class FakeQToolButton(FakeQAbstractButton):
    QT_CLASS = "QToolButton"


class FakeQCheckBox(FakeQAbstractButton):
    QT_CLASS = "QCheckBox"
    SIGNALS = frozenset({"stateChanged(int)"})

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
        self._checkable = True

    def _onToggled(self, checked):
        self.emitSignal("stateChanged(int)", 2 if checked else 0)


class FakeQRadioButton(FakeQCheckBox):
    QT_CLASS = "QRadioButton"


class FakeQLineEdit(FakeQWidget):
    """QLineEdit: ``setText`` emits ``textChanged`` (when the text changes); ``typeText`` is a user typing."""

    QT_CLASS = "QLineEdit"
    SIGNALS = frozenset(
        {"textChanged(QString)", "textEdited(QString)", "editingFinished()", "returnPressed()"}
    )

    def __init__(self, text="", parent=None):
        super().__init__(parent)
        self._text = str(text)
        self._placeholderText = ""
        self._readOnly = False

    text = qt_property("text")
    placeholderText = qt_property("placeholderText")
    readOnly = qt_property("readOnly")

    def setText(self, text):
        text = str(text)
        if text == self._text:
            return
        self._text = text
        self.emitSignal("textChanged(QString)", text)

    def setPlaceholderText(self, text):
        self._placeholderText = str(text)

    def setReadOnly(self, on):
        self._readOnly = bool(on)

    def clear(self):
        self.setText("")

    def typeText(self, text):
        """Test helper: the user replaces the text and leaves the field."""
        if not self._enabled or self._readOnly:
            return
        self.emitSignal("textEdited(QString)", str(text))
        self.setText(text)
        self.emitSignal("editingFinished()")


class FakeQComboBox(FakeQWidget):
    """QComboBox with (text, data) items; changing the index emits the change signals."""

    QT_CLASS = "QComboBox"
    SIGNALS = frozenset(
        {
            "currentIndexChanged(int)",
            "currentIndexChanged(QString)",
            "currentTextChanged(QString)",
            "activated(int)",
            "activated(QString)",
        }
    )

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items: list[list] = []
        self._currentIndex = -1

    currentIndex = qt_property("currentIndex")
    currentText = property(
        lambda self: self.itemText(self._currentIndex), lambda self, v: self.setCurrentText(v)
    )
    count = property(lambda self: len(self._items))

    def addItem(self, text, userData=None):
        self._items.append([str(text), userData, ""])
        if self._currentIndex < 0:
            self.setCurrentIndex(0)

    def addItems(self, texts):
        for text in texts:
            self.addItem(text)

    def clear(self):
        self._items.clear()
        self.setCurrentIndex(-1)

    def itemText(self, index) -> str:
        return self._items[index][0] if 0 <= index < len(self._items) else ""

    def itemData(self, index, role=None):
        return self._items[index][1] if 0 <= index < len(self._items) else None

    def setItemData(self, index, value, role=None):
        if role == FakeQt.ToolTipRole:
            self._items[index][2] = value
        else:
            self._items[index][1] = value

    def itemToolTip(self, index) -> str:
        """Test helper: the item's tool tip set with ``setItemData(i, text, qt.Qt.ToolTipRole)``."""
        return self._items[index][2]

    def findText(self, text) -> int:
        for i, item in enumerate(self._items):
            if item[0] == text:
                return i
        return -1

    def setCurrentIndex(self, index):
        index = int(index)
        if not -1 <= index < len(self._items):
            index = -1
        if index == self._currentIndex:
            return
        self._currentIndex = index
        self.emitSignal("currentIndexChanged(int)", index)
        self.emitSignal("currentIndexChanged(QString)", self.itemText(index))
        self.emitSignal("currentTextChanged(QString)", self.itemText(index))

    def setCurrentText(self, text):
        index = self.findText(text)
        if index >= 0:
            self.setCurrentIndex(index)

    def chooseText(self, text):
        """Test helper: the user picks the item ``text`` (it must exist)."""
        index = self.findText(text)
        if index < 0:
            raise ValueError(
                f"{self.objectName}: no item {text!r} (items: {[i[0] for i in self._items]})"
            )
        self.setCurrentIndex(index)
        self.emitSignal("activated(int)", index)
        self.emitSignal("activated(QString)", text)

    def itemTexts(self) -> list:
        """Test helper: every item's text."""
        return [item[0] for item in self._items]


class FakeQSpinBox(FakeQWidget):
    QT_CLASS = "QSpinBox"
    SIGNALS = frozenset({"valueChanged(int)", "valueChanged(QString)", "editingFinished()"})

    def __init__(self, parent=None):
        super().__init__(parent)
        self._value = 0
        self._minimum = 0
        self._maximum = 99
        self._singleStep = 1
        self._specialValueText = ""

    value = qt_property("value")
    minimum = qt_property("minimum")
    maximum = qt_property("maximum")
    singleStep = qt_property("singleStep")
    specialValueText = qt_property("specialValueText")

    def setValue(self, value):
        value = max(self._minimum, min(self._maximum, int(value)))
        if value == self._value:
            return
        self._value = value
        self.emitSignal("valueChanged(int)", value)
        self.emitSignal("valueChanged(QString)", str(value))

    def setMinimum(self, minimum):
        self._minimum = int(minimum)
        self._maximum = max(self._maximum, self._minimum)
        self.setValue(self._value)

    def setMaximum(self, maximum):
        self._maximum = int(maximum)
        self._minimum = min(self._minimum, self._maximum)
        self.setValue(self._value)

    def setRange(self, minimum, maximum):
        self._minimum, self._maximum = int(minimum), max(int(minimum), int(maximum))
        self.setValue(self._value)

    def setSingleStep(self, step):
        self._singleStep = int(step)

    def setSpecialValueText(self, text):
        self._specialValueText = str(text)


class FakeQProgressBar(FakeQWidget):
    """QProgressBar; like Qt, a value outside [minimum, maximum] is ignored (except for a busy 0..0 bar)."""

    QT_CLASS = "QProgressBar"
    SIGNALS = frozenset({"valueChanged(int)"})

    def __init__(self, parent=None):
        super().__init__(parent)
        self._minimum, self._maximum, self._value = 0, 100, -1
        self._format = "%p%"
        self._textVisible = True

    value = qt_property("value")
    minimum = qt_property("minimum")
    maximum = qt_property("maximum")
    format = qt_property("format")
    textVisible = qt_property("textVisible")

    def setValue(self, value):
        value = int(value)
        if value == self._value:
            return
        if (value > self._maximum or value < self._minimum) and (
            self._maximum != 0 or self._minimum != 0
        ):
            return
        self._value = value
        self.emitSignal("valueChanged(int)", value)

    def setRange(self, minimum, maximum):
        self._minimum, self._maximum = int(minimum), max(int(minimum), int(maximum))
        if not self._minimum <= self._value <= self._maximum:
            self.reset()

    def setMinimum(self, minimum):
        self.setRange(minimum, max(self._maximum, int(minimum)))

    def setMaximum(self, maximum):
        self.setRange(min(self._minimum, int(maximum)), maximum)

    def reset(self):
        self._value = self._minimum - 1

    def setFormat(self, text):
        self._format = str(text)

    def setTextVisible(self, on):
        self._textVisible = bool(on)


class FakeQPlainTextEdit(FakeQWidget):
    QT_CLASS = "QPlainTextEdit"
    SIGNALS = frozenset({"textChanged()"})

    def __init__(self, parent=None):
        super().__init__(parent)
        self._lines: list[str] = []
        self._readOnly = False
        self._maximumBlockCount = 0

    plainText = property(lambda self: "\n".join(self._lines), lambda self, v: self.setPlainText(v))
    readOnly = qt_property("readOnly")
    maximumBlockCount = qt_property("maximumBlockCount")

    def toPlainText(self) -> str:
        return self.plainText

    def setPlainText(self, text):
        self._lines = str(text).split("\n") if text else []
        self._trim()
        self.emitSignal("textChanged()")

    def appendPlainText(self, text):
        self._lines.extend(str(text).split("\n"))
        self._trim()
        self.emitSignal("textChanged()")

    def clear(self):
        self.setPlainText("")

    def setReadOnly(self, on):
        self._readOnly = bool(on)

    def setMaximumBlockCount(self, count):
        self._maximumBlockCount = int(count)
        self._trim()

    def _trim(self):
        if self._maximumBlockCount > 0 and len(self._lines) > self._maximumBlockCount:
            del self._lines[: len(self._lines) - self._maximumBlockCount]


class FakeQTableWidgetItem:
    """QTableWidgetItem (not a QObject, so ``text()`` is a method, as in PythonQt)."""

    def __init__(self, text=""):
        self._text = str(text)
        self._toolTip = ""
        self._flags = FakeQt.ItemIsSelectable | FakeQt.ItemIsEnabled | FakeQt.ItemIsEditable
        self._data: dict = {}

    def row(self) -> int:
        """The row of the table this item was put in (QTableWidgetItem::row), -1 when none."""
        return getattr(self, "_row", -1)

    def text(self) -> str:
        return self._text

    def setText(self, text):
        self._text = str(text)

    def toolTip(self) -> str:
        return self._toolTip

    def setToolTip(self, text):
        self._toolTip = str(text)

    def flags(self) -> int:
        return self._flags

    def setFlags(self, flags):
        self._flags = int(flags)

    def data(self, role):
        if role == FakeQt.DisplayRole:
            return self._text
        if role == FakeQt.ToolTipRole:
            return self._toolTip
        return self._data.get(role)

    def setData(self, role, value):
        if role == FakeQt.DisplayRole:
            self._text = str(value)
        elif role == FakeQt.ToolTipRole:
            self._toolTip = str(value)
        else:
            self._data[role] = value

    def setTextAlignment(self, alignment):
        self._data["alignment"] = alignment

    def setForeground(self, brush):
        self._data["foreground"] = brush


class FakeQHeaderView(FakeQWidget):
    QT_CLASS = "QHeaderView"
    Interactive, Stretch, Fixed, ResizeToContents = 0, 1, 2, 3

    def setSectionResizeMode(self, *args):
        pass

    def setStretchLastSection(self, on):
        pass


class FakeQTableWidget(FakeQWidget):
    """QTableWidget: ``rowCount``/``columnCount`` are properties (as in PythonQt), ``currentRow()`` a method."""

    QT_CLASS = "QTableWidget"
    SIGNALS = frozenset(
        {
            "itemSelectionChanged()",
            "currentCellChanged(int,int,int,int)",
            "cellClicked(int,int)",
            "cellDoubleClicked(int,int)",
            "itemChanged(QTableWidgetItem*)",
        }
    )

    def __init__(self, parent=None):
        super().__init__(parent)
        self._rows = 0
        self._columns = 0
        self._items: dict = {}
        self._header: list = []
        self._currentRow = -1
        self._selectedRows: set[int] = set()
        self._horizontalHeader = FakeQHeaderView()

    rowCount = property(lambda self: self._rows, lambda self, v: self.setRowCount(v))
    columnCount = property(lambda self: self._columns, lambda self, v: self.setColumnCount(v))

    def setRowCount(self, rows):
        self._rows = max(0, int(rows))
        self._items = {k: v for k, v in self._items.items() if k[0] < self._rows}
        if self._currentRow >= self._rows:
            self._setCurrent(-1)
        self._setSelection({r for r in self._selectedRows if r < self._rows})

    def setColumnCount(self, columns):
        self._columns = max(0, int(columns))
        self._header = (self._header + [""] * self._columns)[: self._columns]

    def setHorizontalHeaderLabels(self, labels):
        labels = list(labels)
        if len(labels) > self._columns:
            self.setColumnCount(len(labels))
        self._header[: len(labels)] = [str(label) for label in labels]

    def horizontalHeaderLabels(self) -> list:
        """Test helper: the column titles."""
        return list(self._header)

    def horizontalHeaderItem(self, column):
        return FakeQTableWidgetItem(self._header[column]) if 0 <= column < self._columns else None

    def horizontalHeader(self):
        return self._horizontalHeader

    def setItem(self, row, column, item):
        if 0 <= row < self._rows and 0 <= column < self._columns:
            item._row = row
            self._items[(row, column)] = item

    def item(self, row, column):
        return self._items.get((row, column))

    def clearContents(self):
        self._items.clear()

    def currentRow(self) -> int:
        return self._currentRow

    def _setCurrent(self, row, column=0):
        """The current cell moves: ``currentCellChanged`` only (selection is separate in Qt)."""
        previous = self._currentRow
        if row == previous:
            return
        self._currentRow = row
        self.emitSignal("currentCellChanged(int,int,int,int)", row, column, previous, 0)

    def _setSelection(self, rows):
        """``itemSelectionChanged`` fires only when the selected rows change, as in Qt."""
        rows = set(rows)
        if rows == self._selectedRows:
            return
        self._selectedRows = rows
        self.emitSignal("itemSelectionChanged()")

    def selectRow(self, row):
        """QTableView::selectRow: the row becomes current and the only selected row."""
        if 0 <= row < self._rows:
            self._setCurrent(int(row))
            self._setSelection({int(row)})

    def setCurrentCell(self, row, column):
        """QTableWidget::setCurrentCell (ClearAndSelect): current and selected."""
        if -1 <= row < self._rows:
            self._setCurrent(int(row), int(column))
            self._setSelection({int(row)} if row >= 0 else set())

    def clearSelection(self):
        """QAbstractItemView::clearSelection keeps the current index (the old fake reset it)."""
        self._setSelection(set())

    def selectedItems(self):
        """The items of the selected cells (QTableWidget::selectedItems)."""
        return [
            self._items[(r, c)]
            for r in sorted(self._selectedRows)
            for c in range(self._columns)
            if (r, c) in self._items
        ]

    def clickCell(self, row, column=0):
        """Test helper: the user clicks a cell."""
        self.setCurrentCell(row, column)
        self.emitSignal("cellClicked(int,int)", row, column)

    def rowTexts(self, row) -> list:
        """Test helper: the texts of one row ('' for empty cells)."""
        return [
            self._items[(row, c)].text() if (row, c) in self._items else ""
            for c in range(self._columns)
        ]

    def resizeColumnsToContents(self):
        pass


class FakeQTimer(FakeQObject):
    """QTimer that never fires by itself: ``fire()`` (or :func:`process_timers`) is time passing."""

    QT_CLASS = "QTimer"
    SIGNALS = frozenset({"timeout()"})
    _instances: weakref.WeakSet = weakref.WeakSet()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._interval = 0
        self._singleShot = False
        self._active = False
        FakeQTimer._instances.add(self)

    interval = qt_property("interval")
    active = property(lambda self: self._active)

    def setInterval(self, msec):
        self._interval = int(msec)

    def setSingleShot(self, on):
        self._singleShot = bool(on)

    def isSingleShot(self) -> bool:
        return self._singleShot

    def start(self, msec=None):
        if msec is not None:
            self._interval = int(msec)
        self._active = True

    def stop(self):
        self._active = False

    def isActive(self) -> bool:
        return self._active

    def fire(self) -> bool:
        """Test helper: the interval has passed; returns whether the timer was active."""
        if not self._active:
            return False
        if self._singleShot:
            self._active = False
        self.emitSignal("timeout()")
        return True


def process_timers(times: int = 1) -> int:
    """Let time pass: fire every active fake timer, ``times`` rounds; returns how many fired."""
    fired = 0
    for _ in range(times):
        for timer in list(FakeQTimer._instances):
            if timer.fire():
                fired += 1
    return fired


class FakeQt:
    """The ``qt.Qt`` namespace: the constants the panel uses."""

    ItemIsSelectable, ItemIsEditable, ItemIsEnabled = 1, 2, 32
    DisplayRole, DecorationRole, EditRole, ToolTipRole, UserRole = 0, 1, 2, 3, 256
    AlignLeft, AlignRight, AlignHCenter, AlignVCenter, AlignCenter = 0x1, 0x2, 0x4, 0x80, 0x84
    WaitCursor, ArrowCursor = 3, 0
    Horizontal, Vertical = 1, 2
    Checked, Unchecked = 2, 0


class FakeQFile:
    ReadOnly = 1

    def __init__(self, path):
        self._path = str(path)

    def exists(self) -> bool:
        import os

        return os.path.isfile(self._path)

    def open(self, mode) -> bool:
        return self.exists()

    def close(self):
        pass

    def fileName(self) -> str:
        return self._path


class FakeQUiLoader:
    """Builds fake widgets from a ``.ui`` file, like ``QUiLoader.load`` builds real ones."""

    def load(self, qfile, parent=None):
        path = qfile.fileName() if hasattr(qfile, "fileName") else str(qfile)
        widget = build_ui(path)
        if parent is not None:
            widget.setParent(parent)
        return widget


class FakeQFileDialog:
    """Static dialogs answer what a test queued in ``answers`` ('' = the user cancelled)."""

    answers: list = []
    calls: list = []

    @classmethod
    def _answer(cls, kind, args):
        cls.calls.append((kind, args))
        return cls.answers.pop(0) if cls.answers else ""

    @classmethod
    def getExistingDirectory(cls, *args, **kwargs):
        return cls._answer("getExistingDirectory", args)

    @classmethod
    def getOpenFileName(cls, *args, **kwargs):
        return cls._answer("getOpenFileName", args)

    @classmethod
    def getSaveFileName(cls, *args, **kwargs):
        return cls._answer("getSaveFileName", args)


class FakeQMessageBox(FakeQWidget):
    """Static boxes record their text and answer ``answer`` (Ok by default)."""

    QT_CLASS = "QMessageBox"
    NoButton, Ok, Cancel, Yes, No = 0x0, 0x400, 0x400000, 0x4000, 0x10000
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4
    answer = Ok
    shown: list = []

    @classmethod
    def _show(cls, kind, args):
        cls.shown.append((kind, args))
        return cls.answer

    @classmethod
    def critical(cls, *args, **kwargs):
        return cls._show("critical", args)

    @classmethod
    def warning(cls, *args, **kwargs):
        return cls._show("warning", args)

    @classmethod
    def information(cls, *args, **kwargs):
        return cls._show("information", args)

    @classmethod
    def question(cls, *args, **kwargs):
        return cls._show("question", args)


class FakeQApplication:
    override_cursors: list = []

    @classmethod
    def setOverrideCursor(cls, cursor):
        cls.override_cursors.append(cursor)

    @classmethod
    def restoreOverrideCursor(cls):
        if cls.override_cursors:
            cls.override_cursors.pop()

    @staticmethod
    def processEvents(*args):
        pass


# --- ctk


class FakectkCollapsibleButton(FakeQAbstractButton):
    QT_CLASS = "ctkCollapsibleButton"
    SIGNALS = frozenset({"contentsCollapsed(bool)"})

    def __init__(self, parent=None):
        super().__init__("", parent)
        self._checkable = True
        self._checked = True

    collapsed = property(lambda self: not self._checked, lambda self, v: self.setCollapsed(v))

    def setCollapsed(self, collapsed):
        self.setChecked(not collapsed)

    def _onToggled(self, checked):
        self.emitSignal("contentsCollapsed(bool)", not checked)


class FakectkPathLineEdit(FakeQWidget):
    QT_CLASS = "ctkPathLineEdit"
    SIGNALS = frozenset({"currentPathChanged(QString)", "validInputChanged(bool)"})

    def __init__(self, parent=None):
        super().__init__(parent)
        self._currentPath = ""
        self._nameFilters: list = []
        self._filters = None

    currentPath = qt_property("currentPath")
    nameFilters = property(
        lambda self: list(self._nameFilters), lambda self, v: self.setNameFilters(v)
    )
    filters = qt_property("filters")

    def setCurrentPath(self, path):
        path = str(path)
        if path == self._currentPath:
            return
        self._currentPath = path
        self.emitSignal("currentPathChanged(QString)", path)

    def setNameFilters(self, filters):
        self._nameFilters = list(filters)

    def setFilters(self, filters):
        self._filters = filters

    def addCurrentPathToHistory(self):
        pass


# --- qMRML (on the ``slicer`` namespace, as in the application)


class FakeqMRMLWidget(FakeQWidget):
    QT_CLASS = "qMRMLWidget"
    SIGNALS = frozenset({"mrmlSceneChanged(vtkMRMLScene*)"})

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def mrmlScene(self):
        return self._scene

    def setMRMLScene(self, scene):
        if scene is self._scene:
            return
        self._scene = scene
        self.emitSignal("mrmlSceneChanged(vtkMRMLScene*)", scene)


_SCENE_OBSERVATIONS: list = []
"""(scene, tag) of every scene observer a fake widget added; removed by uninstall_qt()."""


class FakeqMRMLNodeComboBox(FakeqMRMLWidget):
    """qMRMLNodeComboBox on the real scene: lists nodes of ``nodeTypes``; without ``noneEnabled``
    it selects a node as soon as there is one (as the real one does when nodes are added)."""

    QT_CLASS = "qMRMLNodeComboBox"
    SIGNALS = frozenset(
        {
            "currentNodeChanged(vtkMRMLNode*)",
            "currentNodeChanged(bool)",
            "currentNodeIDChanged(QString)",
            "nodeAdded(vtkMRMLNode*)",
            "nodeActivated(vtkMRMLNode*)",
        }
    )

    def __init__(self, parent=None):
        super().__init__(parent)
        self._nodeTypes: list = []
        self._noneEnabled = False
        self._showChildNodeTypes = True
        self._current = None
        self._tags: list = []
        self.addEnabled = self.removeEnabled = self.editEnabled = self.renameEnabled = False
        self.noneDisplay = "None"
        self.showHidden = False

    nodeTypes = property(lambda self: list(self._nodeTypes), lambda self, v: self.setNodeTypes(v))
    noneEnabled = qt_property("noneEnabled")
    showChildNodeTypes = qt_property("showChildNodeTypes")
    currentNodeID = property(
        lambda self: self.currentNode().GetID() if self.currentNode() else "",
        lambda self, v: self.setCurrentNodeID(v),
    )

    def setNodeTypes(self, types_):
        self._nodeTypes = [str(t) for t in types_]

    def setNoneEnabled(self, on):
        self._noneEnabled = bool(on)
        self._selectDefault()

    def setShowChildNodeTypes(self, on):
        self._showChildNodeTypes = bool(on)

    def setAddEnabled(self, on):
        self.addEnabled = bool(on)

    def setRemoveEnabled(self, on):
        self.removeEnabled = bool(on)

    def setNoneDisplay(self, text):
        self.noneDisplay = str(text)

    def setMRMLScene(self, scene):
        if scene is self._scene:
            return
        self._forgetScene()
        self._scene = scene
        if scene is not None:
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent):
                tag = scene.AddObserver(event, self._onSceneNodesChanged)
                self._tags.append(tag)
                _SCENE_OBSERVATIONS.append((scene, tag))
        self._current = None
        self._selectDefault()
        self.emitSignal("mrmlSceneChanged(vtkMRMLScene*)", scene)

    def _forgetScene(self):
        if self._scene is not None:
            for tag in self._tags:
                self._scene.RemoveObserver(tag)
        self._tags = []

    def accepts(self, node) -> bool:
        """Whether the combo box lists ``node``."""
        if node is None or (node.GetHideFromEditors() and not self.showHidden):
            return False
        if self._showChildNodeTypes:
            return any(node.IsA(t) for t in self._nodeTypes)
        return node.GetClassName() in self._nodeTypes

    def nodes(self) -> list:
        """The nodes listed, in scene order."""
        if self._scene is None:
            return []
        found = []
        for i in range(self._scene.GetNumberOfNodes()):
            node = self._scene.GetNthNode(i)
            if self.accepts(node):
                found.append(node)
        return found

    def nodeCount(self) -> int:
        return len(self.nodes())

    def _selectDefault(self):
        if self._current is None and not self._noneEnabled:
            listed = self.nodes()
            if listed:
                self.setCurrentNode(listed[0])

    def _onSceneNodesChanged(self, caller, event):
        if (
            self._current is not None
            and self._scene.GetNodeByID(self._current.GetID()) is not self._current
        ):
            self._current = None
            self._emitCurrent()
        self._selectDefault()

    def currentNode(self):
        return self._current

    def setCurrentNode(self, node):
        if node is not None and not self.accepts(node):
            raise ValueError(
                f"{self.objectName}: a {node.GetClassName()} is not one of {self._nodeTypes}"
            )
        if node is self._current:
            return
        self._current = node
        self._emitCurrent()

    def setCurrentNodeID(self, nodeID):
        self.setCurrentNode(self._scene.GetNodeByID(nodeID) if (self._scene and nodeID) else None)

    def _emitCurrent(self):
        node = self._current
        self.emitSignal("currentNodeChanged(vtkMRMLNode*)", node)
        self.emitSignal("currentNodeChanged(bool)", node is not None)
        self.emitSignal("currentNodeIDChanged(QString)", node.GetID() if node is not None else "")


class FakeqMRMLPlotWidget(FakeqMRMLWidget):
    QT_CLASS = "qMRMLPlotWidget"

    def __init__(self, parent=None):
        super().__init__(parent)
        self._viewNode = None

    def setMRMLPlotViewNode(self, node):
        self._viewNode = node

    def mrmlPlotViewNode(self):
        return self._viewNode

    def plotView(self):
        return types.SimpleNamespace(fitToContent=lambda: None)


# --- the .ui loader


WIDGET_CLASSES = {
    cls.QT_CLASS: cls
    for cls in (
        FakeQWidget,
        FakeQFrame,
        FakeQGroupBox,
        FakeQLabel,
        FakeQPushButton,
        FakeQToolButton,
        FakeQCheckBox,
        FakeQRadioButton,
        FakeQLineEdit,
        FakeQComboBox,
        FakeQSpinBox,
        FakeQProgressBar,
        FakeQPlainTextEdit,
        FakeQTableWidget,
        FakectkCollapsibleButton,
        FakectkPathLineEdit,
        FakeqMRMLWidget,
        FakeqMRMLNodeComboBox,
        FakeqMRMLPlotWidget,
    )
}
"""The ``<widget class=...>`` names the loader can build; any other class fails the load."""


def _ui_value(element):
    """The Python value of a ``<property>``'s content element (string, bool, number, list...)."""
    if element is None:
        return None
    tag, text = element.tag, element.text or ""
    if tag in ("string", "cstring", "enum", "set"):
        return text
    if tag == "bool":
        return text.strip() == "true"
    if tag == "number":
        return int(text)
    if tag == "double":
        return float(text)
    if tag == "stringlist":
        return [s.text or "" for s in element.findall("string")]
    return {child.tag: child.text for child in element}  # size, rect, sizepolicy...


def _ui_text(element) -> str:
    """The ``text`` property of an ``<item>`` or ``<column>``."""
    for prop in element.findall("property"):
        if prop.get("name") == "text":
            return _ui_value(next(iter(prop), None)) or ""
    return ""


def _apply_ui_property(widget, name, value):
    setter = getattr(widget, "set" + name[:1].upper() + name[1:], None)
    if callable(setter) and value is not None and not isinstance(value, dict):
        setter(value)
    else:
        widget.setProperty(name, value)


def _build_widget(element, parent, named):
    class_name = element.get("class")
    cls = WIDGET_CLASSES.get(class_name)
    if cls is None:
        raise ValueError(
            f"the fake Qt cannot build a {class_name} (widget {element.get('name')!r}): "
            "add it to fakeslicer.py"
        )
    widget = cls(parent=parent)
    widget.setObjectName(element.get("name") or "")
    if widget.objectName:
        if widget.objectName in named:
            raise ValueError(f"two widgets are named {widget.objectName!r} in the .ui")
        named[widget.objectName] = widget
    for child in element:
        if child.tag == "property":
            _apply_ui_property(widget, child.get("name"), _ui_value(next(iter(child), None)))
        elif child.tag == "item" and isinstance(widget, FakeQComboBox):
            text = _ui_text(child)
            widget.addItem(text)
        elif child.tag == "column" and isinstance(widget, FakeQTableWidget):
            text = _ui_text(child)
            widget._columnTitlesFromUi = getattr(widget, "_columnTitlesFromUi", []) + [text]
            widget.setHorizontalHeaderLabels(widget._columnTitlesFromUi)
        elif child.tag == "layout":
            layout = FakeQLayout(widget)
            _build_layout(child, widget, layout, named)
        elif child.tag == "widget":
            _build_widget(child, widget, named)
    return widget


def _build_layout(element, owner, layout, named):
    for item in element.findall("item"):
        for child in item:
            if child.tag == "widget":
                layout.addWidget(_build_widget(child, owner, named))
            elif child.tag == "layout":
                _build_layout(child, owner, FakeQLayout(), named)


def build_ui(path) -> FakeQWidget:
    """Build the fake widget tree a ``.ui`` file describes, with its ``<connections>`` made."""
    root = ET.parse(str(path)).getroot()
    top = root.find("widget")
    if top is None:
        raise ValueError(f"{path}: no top-level <widget>")
    named: dict = {}
    widget = _build_widget(top, None, named)
    for connection in root.findall("connections/connection"):
        sender, receiver = (
            named.get(connection.findtext("sender")),
            named.get(connection.findtext("receiver")),
        )
        if sender is None or receiver is None:
            raise ValueError(
                f"{path}: a connection names a widget the .ui lacks: {ET.tostring(connection, 'unicode')}"
            )
        slot = getattr(receiver, connection.findtext("slot").split("(")[0])
        sender.connect(connection.findtext("signal"), slot)
    widget.uiPath = str(path)
    return widget


# --- slicer.app and the install/uninstall of it all


class FakeSlicerApp:
    """``slicer.app``: testing mode, no main window, no layout manager."""

    applicationName = "Slicer"
    temporaryPath = "/tmp"

    def __init__(self):
        self.processed_events = 0

    def processEvents(self, *args):
        self.processed_events += 1

    def testingEnabled(self) -> bool:
        return True

    def topLevelWidgets(self) -> list:
        return []

    def layoutManager(self):
        return None

    def setOverrideCursor(self, cursor):
        FakeQApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self):
        FakeQApplication.restoreOverrideCursor()


_QT_MODULES: dict = {}
_QT_SAVED: dict | None = None
_MISSING = object()


def _qt_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """The fake ``qt`` and ``ctk`` modules (made once per process, so imports stay valid)."""
    if not _QT_MODULES:
        qt_module = types.ModuleType("qt")
        qt_module.__doc__ = (
            "Fake PythonQt 'qt' for tests (Testing/Python/slicer_module/fakeslicer.py)."
        )
        for cls in (
            FakeQObject,
            FakeQWidget,
            FakeQFrame,
            FakeQGroupBox,
            FakeQLabel,
            FakeQAbstractButton,
            FakeQPushButton,
            FakeQToolButton,
            FakeQCheckBox,
            FakeQRadioButton,
            FakeQLineEdit,
            FakeQComboBox,
            FakeQSpinBox,
            FakeQProgressBar,
            FakeQPlainTextEdit,
            FakeQTableWidget,
            FakeQHeaderView,
            FakeQTimer,
            FakeQFileDialog,
            FakeQMessageBox,
        ):
            setattr(qt_module, cls.__name__[len("Fake") :], cls)
        qt_module.QTableWidgetItem = FakeQTableWidgetItem
        qt_module.Qt = FakeQt
        qt_module.QFile = FakeQFile
        qt_module.QUiLoader = FakeQUiLoader
        qt_module.QApplication = FakeQApplication
        qt_module.QVBoxLayout = qt_module.QHBoxLayout = qt_module.QFormLayout = (
            qt_module.QGridLayout
        ) = FakeQLayout
        ctk_module = types.ModuleType("ctk")
        ctk_module.__doc__ = "Fake 'ctk' for tests (Testing/Python/slicer_module/fakeslicer.py)."
        ctk_module.ctkCollapsibleButton = FakectkCollapsibleButton
        ctk_module.ctkPathLineEdit = FakectkPathLineEdit
        _QT_MODULES.update(qt=qt_module, ctk=ctk_module)
    return _QT_MODULES["qt"], _QT_MODULES["ctk"]


class QtFakes(types.SimpleNamespace):
    """What :func:`install_qt` installed, with the recorders tests read.

    ``errors`` / ``warnings`` / ``infos``: texts given to ``slicer.util.errorDisplay`` and co.;
    ``selected_modules``: names given to ``slicer.util.selectModule``.
    """


def install_qt() -> QtFakes:
    """Install the fake ``qt``, ``ctk``, qMRML widgets, ``slicer.app`` and display recorders.

    Also calls :func:`install`. Idempotent; :func:`uninstall_qt` restores what was there.
    """
    global _QT_SAVED
    install()
    import slicer
    import slicer.util

    qt_module, ctk_module = _qt_modules()
    if _QT_SAVED is None:
        _QT_SAVED = {
            "modules": {name: sys.modules.get(name, _MISSING) for name in ("qt", "ctk")},
            "slicer": {
                name: getattr(slicer, name, _MISSING)
                for name in ("app", "qMRMLWidget", "qMRMLNodeComboBox", "qMRMLPlotWidget")
            },
            "util": {
                name: getattr(slicer.util, name)
                for name in ("errorDisplay", "warningDisplay", "infoDisplay", "selectModule")
            },
        }
    fakes = QtFakes(
        qt=qt_module,
        ctk=ctk_module,
        app=FakeSlicerApp(),
        errors=[],
        warnings=[],
        infos=[],
        selected_modules=[],
    )
    sys.modules["qt"], sys.modules["ctk"] = qt_module, ctk_module
    slicer.app = fakes.app
    slicer.qMRMLWidget, slicer.qMRMLNodeComboBox, slicer.qMRMLPlotWidget = (
        FakeqMRMLWidget,
        FakeqMRMLNodeComboBox,
        FakeqMRMLPlotWidget,
    )
    slicer.util.errorDisplay = lambda text, *a, **k: fakes.errors.append(str(text))
    slicer.util.warningDisplay = lambda text, *a, **k: fakes.warnings.append(str(text))
    slicer.util.infoDisplay = lambda text, *a, **k: fakes.infos.append(str(text))
    slicer.util.selectModule = lambda module: fakes.selected_modules.append(
        module if isinstance(module, str) else module.name
    )
    FakeQFileDialog.answers, FakeQFileDialog.calls = [], []
    FakeQMessageBox.shown, FakeQMessageBox.answer = [], FakeQMessageBox.Ok
    FakeQApplication.override_cursors = []
    return fakes


def uninstall_qt() -> None:
    """Remove what :func:`install_qt` added (fake widgets' scene observers included)."""
    global _QT_SAVED
    while _SCENE_OBSERVATIONS:
        scene, tag = _SCENE_OBSERVATIONS.pop()
        scene.RemoveObserver(tag)
    for timer in list(FakeQTimer._instances):
        timer.stop()
    if _QT_SAVED is None:
        return
    import slicer
    import slicer.util

    for name, value in _QT_SAVED["modules"].items():
        if value is _MISSING:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = value
    for name, value in _QT_SAVED["slicer"].items():
        if value is _MISSING:
            if hasattr(slicer, name):
                delattr(slicer, name)
        else:
            setattr(slicer, name, value)
    for name, value in _QT_SAVED["util"].items():
        setattr(slicer.util, name, value)
    _QT_SAVED = None
