"""The Qt-free scene layer of the Slicer module: one ``analyze`` output folder -> MRML nodes on any vtkMRMLScene.

Everything here takes the scene and the module logics it needs (``SceneLogics``), so it runs both in Slicer (the
widget and GliomaAnalysisLogic call it with ``slicer.modules.*.logic()``) and on ``pip install slicer-core`` without
Qt (Testing/slicer/test_scene.py). No qt, ctk or slicer.util import; Python 3.9 syntax (Slicer 5.8).
"""
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import slicer
import vtk

from .helpers import table_rows

TERMINOLOGY_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources",
                                "GliomaAnalysis.term.json")
# label value in segmentation.nii.gz per label convention: BraTS 2021 writes ET=4, BraTS 2023 ET=3
LABEL_VALUES = {"brats2021": {"6574001": 1, "79654002": 2, "108369006": 4},
                "brats2023": {"6574001": 1, "79654002": 2, "108369006": 3}}
MAPS = (("prob_et", "P(ET)"), ("prob_ncr", "P(NCR)"), ("prob_ed", "P(ED)"), ("uncertainty", "uncertainty"))
MAP_COLORS = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
MAP_RANGE = (0.0, 1.0)  # window of every probability / uncertainty map
MAP_THRESHOLD = 0.1  # voxels below are transparent in the overlay
TABLE_COLUMNS = ("item", "value", "uncertainty", "evidence")
LABELMAP_OPTION = 1  # vtkSlicerVolumesLogic::AddArchetypeVolume loading option bit: load as a label map


class SceneLogics:
    """The scene and the module logics the layer needs. Keep this object alive while the nodes are in use: in
    slicer-core a collected colour logic empties the colour tables."""

    def __init__(self, scene, volumes, segmentations, terminologies):
        self.scene = scene
        self.volumes = volumes
        self.segmentations = segmentations
        self.terminologies = terminologies


class SegmentType:
    """One segment's terminology entry from the loaded context: label value, name, colour and the serialized tag."""

    def __init__(self, code: str, name: str, color: Tuple[float, float, float], entry: str):
        self.code, self.name, self.color, self.entry = code, name, color, entry


def load_terminology(terminologies, path: str = TERMINOLOGY_FILE) -> List[SegmentType]:
    """Load the shipped ``GliomaAnalysis.term.json`` into the terminologies logic; its segment types (name =
    the type's 3dSlicerLabel, colour = recommendedDisplayRGBValue, tag = the logic's serialized entry)."""
    context = terminologies.LoadTerminologyFromFile(path)
    if not context:
        raise RuntimeError(f"{path}: Slicer could not load this terminology file")
    if hasattr(terminologies, "GetNthCategoryInTerminology"):
        category = slicer.vtkSlicerTerminologyCategory()
        if not terminologies.GetNthCategoryInTerminology(context, 0, category):
            raise RuntimeError(f"{path}: the terminology has no category")
        kinds = []
        for index in range(terminologies.GetNumberOfTypesInTerminologyCategory(context, category)):
            kind = slicer.vtkSlicerTerminologyType()
            terminologies.GetNthTypeInTerminologyCategory(context, category, index, kind)
            kinds.append(kind)
    else:  # a Slicer whose logic lacks the index accessors: the same objects from the file
        category, kinds = _terminology_objects(path)
    types = []
    for kind in kinds:
        entry = slicer.vtkSlicerTerminologyEntry()
        entry.SetTerminologyContextName(context)
        entry.GetCategoryObject().Copy(category)
        entry.GetTypeObject().Copy(kind)
        rgb = kind.GetRecommendedDisplayRGBValue()
        types.append(SegmentType(kind.GetCodeValue(), kind.GetSlicerLabel() or kind.GetCodeMeaning(),
                                 tuple(c / 255.0 for c in rgb), terminologies.SerializeTerminologyEntry(entry)))
    return types


def _terminology_objects(path: str):
    """The first category of a .term.json and its types as Slicer terminology objects, read from the file."""
    with open(path) as handle:
        first = json.load(handle)["SegmentationCodes"]["Category"][0]
    category = slicer.vtkSlicerTerminologyCategory()
    _set_code(category, first)
    kinds = []
    for item in first["Type"]:
        kind = slicer.vtkSlicerTerminologyType()
        _set_code(kind, item)
        kind.SetSlicerLabel(item.get("3dSlicerLabel", ""))
        kind.SetRecommendedDisplayRGBValue(*item["recommendedDisplayRGBValue"])
        kinds.append(kind)
    return category, kinds


def _set_code(entry, item: Dict) -> None:
    entry.SetCodingSchemeDesignator(item["CodingSchemeDesignator"])
    entry.SetCodeValue(item["CodeValue"])
    entry.SetCodeMeaning(item["CodeMeaning"])


def read_report(out_dir: str) -> Dict:
    """report.json of an output folder."""
    with open(os.path.join(out_dir, "report.json")) as handle:
        return json.load(handle)


def load_volume(logics: SceneLogics, path: str, name: str, labelmap: bool = False):
    """A volume file as a node of ``logics.scene`` through the volumes logic (slicer.util.loadVolume needs the
    application); raises RuntimeError naming the file when it cannot be read."""
    node = logics.volumes.AddArchetypeVolume(path, name, LABELMAP_OPTION if labelmap else 0)
    if node is None:
        raise RuntimeError(f"{path}: Slicer could not read this volume")
    return node


def add_to_study(scene, reference, nodes: Sequence) -> None:
    """Put ``nodes`` in the subject-hierarchy folder (study) of ``reference``, creating items where the scene
    has none (slicer-core creates none by itself)."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    referenceItem = sh.GetItemByDataNode(reference)
    if not referenceItem:
        referenceItem = sh.CreateItem(sh.GetSceneItemID(), reference)
    parent = sh.GetItemParent(referenceItem)
    for node in nodes:
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, parent)
        else:
            sh.CreateItem(parent, node)


def load_segmentation(logics: SceneLogics, out_dir: str, reference, types: Sequence[SegmentType],
                      labels: str, segmentation=None):
    """segmentation.nii.gz as a segmentation node on ``reference``'s geometry (parameter and node reference, as
    DICOM SEG export needs both), one segment per terminology type present, with its name, colour and tag;
    closed surfaces created (3D)."""
    scene = logics.scene
    labelmap = load_volume(logics, os.path.join(out_dir, "segmentation.nii.gz"), "GliomaAnalysis labels",
                           labelmap=True)
    if segmentation is None:
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                               scene.GenerateUniqueName(f"{reference.GetName()} glioma"))
    else:
        segmentation.GetSegmentation().RemoveAllSegments()
    segmentation.SetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole(), reference.GetID())
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    try:
        if not logics.segmentations.ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise RuntimeError(f"{out_dir}/segmentation.nii.gz: could not be imported as a segmentation")
    finally:
        scene.RemoveNode(labelmap)
    content = segmentation.GetSegmentation()
    values = LABEL_VALUES[labels]
    for kind in types:
        segment = segment_with_label(content, values[kind.code])
        if segment is None:  # that subregion is absent
            continue
        segment.SetName(kind.name)
        segment.SetColor(*kind.color)
        segment.SetTag(segment.GetTerminologyEntryTagName(), kind.entry)
    segmentation.CreateDefaultDisplayNodes()
    segmentation.GetDisplayNode().SetOpacity2DFill(0.5)
    segmentation.CreateClosedSurfaceRepresentation()
    return segmentation


def segment_with_label(content, value: int):
    """The segment of a vtkSegmentation whose label value is ``value``, or None."""
    for index in range(content.GetNumberOfSegments()):
        segment = content.GetNthSegment(index)
        if segment.GetLabelValue() == value:
            return segment
    return None


def load_map(logics: SceneLogics, path: str, name: str):
    """One probability / uncertainty map as a scalar volume node: rainbow colours, window 0-1, threshold 0.1.

    Its display node is set up before the voxels are read, so Slicer computes no automatic window/level for a map
    whose window is fixed anyway; the voxels and geometry come through the same archetype storage node that
    ``AddArchetypeVolume`` uses (0.09 s against its 0.19 s for a 240x240x155 float map, measured on slicer-core; its
    display node's automatic window/level alone took 0.085 s). Raises
    RuntimeError naming the file when it cannot be read (and leaves no node behind)."""
    scene = logics.scene
    display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*MAP_RANGE)
    display.SetAndObserveColorNodeID(MAP_COLORS)
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(MAP_THRESHOLD)
    display.SetUpperThreshold(MAP_RANGE[1])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(path)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetAndObserveDisplayNodeID(display.GetID())
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        for created in (node, storage, display):
            scene.RemoveNode(created)
        raise RuntimeError(f"{path}: Slicer could not read this volume")
    node.StorableModified()  # saved with the scene: the run's temporary folder is deleted later
    return node


def load_maps(logics: SceneLogics, out_dir: str, reference) -> Dict:
    """The probability and uncertainty maps present in ``out_dir`` as hidden volumes (``load_map``)."""
    maps = {}
    for stem, title in MAPS:
        path = os.path.join(out_dir, f"{stem}.nii.gz")
        if os.path.isfile(path):  # --no-uncertainty writes no uncertainty map
            maps[stem] = load_map(logics, path, f"{reference.GetName()} {title}")
    return maps


def load_registered(logics: SceneLogics, out_dir: str, reference) -> Dict:
    """The co-registered inputs the CLI kept (``--save-registered``); {} when none."""
    folder = os.path.join(out_dir, "registered")
    if not os.path.isdir(folder):
        return {}
    volumes = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".nii.gz"):
            modality = name[:-len(".nii.gz")]
            volumes[modality] = load_volume(logics, os.path.join(folder, name),
                                            f"{reference.GetName()} registered {modality}")
            volumes[modality].StorableModified()
    return volumes


def results_table(scene, report: Dict, name: str):
    """A table node of ``helpers.table_rows(report)`` (item, value, uncertainty, evidence)."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    columns = []
    for title in TABLE_COLUMNS:
        column = vtk.vtkStringArray()
        column.SetName(title)
        columns.append(column)
    for row in table_rows(report):
        for column, value in zip(columns, row):
            column.InsertNextValue(value)
    for column in columns:
        table.AddColumn(column)
    return table


def load_results(logics: SceneLogics, out_dir: str, reference, segmentation=None,
                 types: Optional[Sequence[SegmentType]] = None) -> Dict:
    """Everything of one output folder into the scene, for the input node ``reference`` (the CLI's reference
    modality): the segmentation, the maps, the table, the registered inputs; all in ``reference``'s study and under
    its parent transform (the inputs were sent in their local coordinates). Returns the nodes and the report."""
    report = read_report(out_dir)
    if types is None:
        types = load_terminology(logics.terminologies)
    segmentation = load_segmentation(logics, out_dir, reference, types, report["label_convention"], segmentation)
    maps = load_maps(logics, out_dir, reference)
    table = results_table(logics.scene, report, f"{reference.GetName()} glioma results")
    registered = load_registered(logics, out_dir, reference)
    nodes = [segmentation, table, *maps.values(), *registered.values()]
    transformID = reference.GetTransformNodeID()
    for node in [segmentation, *maps.values(), *registered.values()]:
        node.SetAndObserveTransformNodeID(transformID)
    add_to_study(logics.scene, reference, nodes)
    return {"segmentation": segmentation, "maps": maps, "table": table, "report": report, "registered": registered}


def table_cells(table) -> List[Tuple[str, ...]]:
    """The rows of a results table node as tuples of cell texts."""
    return [tuple(table.GetCellText(row, column) for column in range(table.GetNumberOfColumns()))
            for row in range(table.GetNumberOfRows())]
