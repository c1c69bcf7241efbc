"""A dock whose content scrolls, tabbed with the plugin's other docks: all fit 1600x1000.

Docks stacked in napari's right area share its height; a dock taller than its share
clipped its last lines (the card's model line, the fine-tune decision). So the plugin's
docks join one tab group (the one opened last in front), and inside a scroll area each
can still shrink and show everything.
"""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QVBoxLayout, QWidget

_SCROLLBAR_PX = 18


class ScrollingDock(QWidget):
    """Put the dock's widgets into ``content_layout``."""

    def __init__(self) -> None:
        super().__init__()
        self.content = QWidget()
        self.content_layout = QVBoxLayout(self.content)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)  # never clipped
        scroll.setWidget(self.content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        # napari wraps the widget in its dock after the constructor: tab it on the next turn.
        QTimer.singleShot(0, lambda: tab_with_the_plugins_docks(self))

    # A scroll area asks for almost no room; the dock asks for its content's width (and
    # height up to what a 1000 px screen has), so napari sizes the dock area for it.
    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        content = self.content.sizeHint()
        return QSize(content.width() + _SCROLLBAR_PX, min(content.height(), 760))

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(self.content.minimumSizeHint().width() + _SCROLLBAR_PX, 120)


def tab_with_the_plugins_docks(widget: QWidget) -> None:
    """Put ``widget``'s dock into one tab group with the plugin's other docks of its area."""
    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    window = dock.parentWidget() if dock is not None else None
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return
    area = window.dockWidgetArea(dock)
    ours = [
        other
        for other in window.findChildren(QDockWidget)
        if isinstance(other.widget(), ScrollingDock)
        and not other.isHidden()
        and not other.isFloating()
        and window.dockWidgetArea(other) == area
    ]
    if len(ours) < 2:
        return
    first = ours[0]
    for other in ours[1:]:
        if other not in window.tabifiedDockWidgets(first):
            window.tabifyDockWidget(first, other)
    dock.show()
    dock.raise_()
