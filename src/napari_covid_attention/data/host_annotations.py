"""Where a host scan is not healthy lung: its annotated nodules and tumour, as a voxel mask.

Lesions are never inserted over these regions (:mod:`.lesion_insertion`). Two formats of
the real hosts in ``../shared/data/real-chest-ct/annotations``:

- LIDC-IDRI reader XML: nodule contours per slice (``imageZposition`` in patient mm, pixel
  ``xCoord``/``yCoord``), single points for nodules < 3 mm and non-nodules;
- Pascal-VOC boxes per slice keyed by SOP instance UID only (Lung-PET-CT-Dx). Without the
  DICOM files the slice of a box is unknown, so the union of the boxes is avoided on every
  slice: a column through the lungs, larger than the tumour but never smaller.

Hand-written because no library reads either format into a mask on a canonical grid
(pylidc needs the full LIDC database). Pixel columns run to the patient's left and rows
to the back in these axial series, which is the canonical (y, x) order.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.draw import polygon

from napari_covid_attention.io.geometry import spacing_mm

# Beyond the drawn outline: readers' contours differ by a few mm, and a lesion right
# against a nodule would blend with it.
AVOID_MARGIN_MM = 5.0
_POINT_RADIUS_MM = 4.0  # a nodule marked by a single point is < 3 mm


def lidc_avoid_mask(xml_path: str | Path, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Nodules and non-nodules of all readers of one LIDC-IDRI XML, on a canonical grid."""
    mask = np.zeros(shape, dtype=bool)
    root = ET.parse(xml_path).getroot()
    for element in root.iter():
        tag = _local(element.tag)
        if tag == "roi":
            z = _z_index(float(_child_text(element, "imageZposition")), affine, shape[0])
            points = [(int(_child_text(e, "yCoord")), int(_child_text(e, "xCoord"))) for e in element if _local(e.tag) == "edgeMap"]
            if z is None or not points:
                continue
            rows, cols = np.array(points).T
            if len(points) >= 3:
                rr, cc = polygon(rows, cols, shape[1:])
                mask[z, rr, cc] = True
            mask[z, np.clip(rows, 0, shape[1] - 1), np.clip(cols, 0, shape[2] - 1)] = True
        elif tag == "nonNodule":
            z = _z_index(float(_child_text(element, "imageZposition")), affine, shape[0])
            locus = next((e for e in element if _local(e.tag) == "locus"), None)
            if z is not None and locus is not None:
                mask[z, int(_child_text(locus, "yCoord")), int(_child_text(locus, "xCoord"))] = True
    return _grow(mask, affine, AVOID_MARGIN_MM)


def box_avoid_mask(box_folder: str | Path, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """The union of the Pascal-VOC boxes in a folder, avoided on every slice (see module doc)."""
    mask = np.zeros(shape, dtype=bool)
    for path in sorted(Path(box_folder).glob("*.xml")):
        for box in ET.parse(path).getroot().iter("bndbox"):
            x0, y0, x1, y1 = (int(float(box.findtext(k, "0"))) for k in ("xmin", "ymin", "xmax", "ymax"))
            mask[:, max(0, y0) : y1 + 1, max(0, x0) : x1 + 1] = True
    return _grow(mask, affine, AVOID_MARGIN_MM)


def avoid_mask_for(scan_path: str | Path, annotations: str | Path | None, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """The avoid mask of a host, from ``annotations/lidc-xml/<stem>.xml`` or ``annotations/<stem>-boxes/``."""
    mask = np.zeros(shape, dtype=bool)
    if annotations is None:
        return mask
    stem = Path(scan_path).name.split(".")[0]
    xml = Path(annotations) / "lidc-xml" / f"{stem}.xml"
    boxes = Path(annotations) / f"{stem}-boxes"
    if xml.is_file():
        mask |= lidc_avoid_mask(xml, shape, affine)
    if boxes.is_dir():
        mask |= box_avoid_mask(boxes, shape, affine)
    return mask


def _grow(mask: np.ndarray, affine: np.ndarray, margin_mm: float) -> np.ndarray:
    if not mask.any():
        return mask
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    spacing = spacing_mm(affine)
    reach = [int(np.ceil(margin_mm / s)) + 1 for s in spacing]
    region = tuple(slice(max(0, b.start - r), min(n, b.stop + r)) for b, r, n in zip(box, reach, mask.shape, strict=True))
    distance = ndimage.distance_transform_edt(~mask[region], sampling=spacing)
    out = np.zeros_like(mask)
    out[region] = distance <= max(margin_mm, _POINT_RADIUS_MM)
    return out


def _z_index(z_mm: float, affine: np.ndarray, n: int) -> int | None:
    index = int(round((z_mm - affine[2, 3]) / affine[2, 0]))
    return index if 0 <= index < n else None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(element: ET.Element, name: str) -> str:
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    raise ValueError(f"<{_local(element.tag)}> has no <{name}>")
