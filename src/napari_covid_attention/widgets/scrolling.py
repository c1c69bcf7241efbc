"""A dock whose content scrolls: three docks fit a 1600x1000 screen.

Docks stacked in napari's right area share its height; a dock taller than its share
clipped its last lines (the card's model line, the fine-tune decision). Inside a scroll
area each dock can shrink and still shows everything.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget


class ScrollingDock(QWidget):
    """Put the dock's widgets into ``content_layout``."""

    def __init__(self) -> None:
        super().__init__()
        self.content = QWidget()
        self.content_layout = QVBoxLayout(self.content)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(self.content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.setMinimumHeight(120)
