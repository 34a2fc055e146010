"""Runs the module's scene layer (GliomaAnalysisModuleLib.scene) on Slicer's own libraries (pip: slicer-core, in
.venv-slicer, see .ci/slicer-core-venv) and writes what a test asserts on; Testing/slicer/test_scene.py runs it.

    .venv-slicer/bin/python Testing/slicer/slicer_core_scene.py CASE_DIR OUT_DIR RESULT_DIR [--screenshot PNG]
                                                                [--no-render]

CASE_DIR holds the phantom's <case>_t1ce.nii.gz (the reference input), OUT_DIR is ``analyze``'s output folder.
RESULT_DIR receives facts.json (segments, table, displays, geometry, subject hierarchy, transforms, the same facts
after a .mrb round trip) and, per view (axial, coronal, threed), <view>_rgb.npy (the rendered pixels, row 0 at the
top) and for the slice views <view>_label.npy (the label value under each pixel). Offscreen through Mesa EGL.
"""
import json
import os
import sys

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # offscreen without an X server

import numpy as np
import slicer
import vtk
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkCollection
from vtkmodules.vtkInteractionStyle import vtkInteractorStyleUser
from vtkmodules.vtkRenderingCore import (vtkActor2D, vtkImageMapper, vtkRenderer, vtkRenderWindow,
                                         vtkRenderWindowInteractor, vtkWindowToImageFilter)
import vtkmodules.vtkInteractionStyle  # noqa: F401
import vtkmodules.vtkRenderingFreeType  # noqa: F401
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "GliomaAnalysis"))
from GliomaAnalysisModuleLib import scene as layer  # noqa: E402

SIZE = 400  # pixels per view


class Application:
    """A scene with the application logic and the module logics the layer and the views need (references kept)."""

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        self.scene.AddNode(crosshair)
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)
        self.app.GetColorLogic().SetMRMLScene(self.scene)
        self.app.GetColorLogic().AddDefaultColorNodes()
        self.app.SetSliceLogics(vtkCollection())
        self.app.SetViewLogics(vtkCollection())
        self.logics = {}
        for name, logic in (("Colors", slicer.vtkSlicerColorLogic()), ("Volumes", slicer.vtkSlicerVolumesLogic()),
                            ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic()),
                            ("Terminologies", slicer.vtkSlicerTerminologiesModuleLogic()),
                            ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic()),
                            ("Tables", slicer.vtkSlicerTablesLogic())):
            logic.SetMRMLApplicationLogic(self.app)
            logic.SetMRMLScene(self.scene)
            self.app.SetModuleLogic(name, logic)
            self.logics[name] = logic
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)
        self.remote = slicer.vtkMRMLRemoteIOLogic()  # .mrb reading and storage nodes need a data IO manager
        self.remote.SetMRMLScene(self.scene)
        self.dataIO = slicer.vtkDataIOManagerLogic()
        self.dataIO.SetMRMLApplicationLogic(self.app)
        self.dataIO.SetAndObserveDataIOManager(self.remote.GetDataIOManager())
        self.scene.SetDataIOManager(self.remote.GetDataIOManager())
        self.layer = layer.SceneLogics(self.scene, self.logics["Volumes"], self.logics["Segmentations"],
                                       self.logics["Terminologies"])
        slicer.mrmlScene = self.scene


def matrix(node, method="GetIJKToRASMatrix"):
    m = vtk.vtkMatrix4x4()
    getattr(node, method)(m)
    return [[round(m.GetElement(r, c), 6) for c in range(4)] for r in range(4)]


def segment_voxels(app, segmentation, segment_id, reference):
    """One segment as a 0/1 array on ``reference``'s grid (slicer.util's version needs slicer.modules)."""
    labelmap = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    if not app.logics["Segmentations"].ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, reference):
        raise RuntimeError(f"{segment_id}: could not be exported")
    voxels = slicer.util.arrayFromVolume(labelmap).copy()
    app.scene.RemoveNode(labelmap)
    return voxels


def segment_tag(segment):
    """The segment's terminology tag (GetTag fills a reference)."""
    value = vtk.reference("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value)


def segmentation_facts(app, segmentation, reference):
    content = segmentation.GetSegmentation()
    segments = []
    for index in range(content.GetNumberOfSegments()):
        segment_id = content.GetNthSegmentID(index)
        segment = content.GetSegment(segment_id)
        voxels = segment_voxels(app, segmentation, segment_id, reference)
        segments.append({"name": segment.GetName(), "color": [round(c, 4) for c in segment.GetColor()],
                         "label": segment.GetLabelValue(), "voxels": int(np.count_nonzero(voxels)),
                         "shape": list(voxels.shape),
                         "tag": segment_tag(segment)})
    representations = []
    content.GetContainedRepresentationNames(representations)
    referenced = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
    return {"name": segmentation.GetName(), "segments": segments, "representations": sorted(representations),
            "geometryReference": referenced.GetName() if referenced else None,
            "transform": segmentation.GetTransformNodeID()}


def facts(app, result_nodes, reference):
    """What the scene holds after load_results (or after reading the .mrb): comparable, JSON-ready."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(app.scene)
    maps = {}
    for stem, node in sorted(result_nodes["maps"].items()):
        display = node.GetDisplayNode()
        maps[stem] = {"name": node.GetName(), "window": [display.GetWindowLevelMin(), display.GetWindowLevelMax()],
                      "threshold": [display.GetLowerThreshold(), display.GetUpperThreshold()],
                      "applyThreshold": bool(display.GetApplyThreshold()),
                      "colors": display.GetColorNodeID(), "ijkToRas": matrix(node),
                      "dimensions": list(node.GetImageData().GetDimensions()),
                      "max": float(slicer.util.arrayFromVolume(node).max()),
                      "sum": float(slicer.util.arrayFromVolume(node).sum(dtype=np.float64)),
                      "autoWindowLevel": bool(display.GetAutoWindowLevel()), "transform": node.GetTransformNodeID()}
    table = result_nodes["table"]
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]

    def parent_name(node):
        return sh.GetItemName(sh.GetItemParent(sh.GetItemByDataNode(node)))

    nodes = [result_nodes["segmentation"], table, *result_nodes["maps"].values()]
    return {"segmentation": segmentation_facts(app, result_nodes["segmentation"], reference), "maps": maps,
            "table": {"name": table.GetName(), "columns": columns, "rows": layer.table_cells(table)},
            "reference": {"name": reference.GetName(), "ijkToRas": matrix(reference),
                          "dimensions": list(reference.GetImageData().GetDimensions())},
            "studies": sorted({parent_name(node) for node in nodes + [reference]})}


class OlderTerminologies:
    """The terminologies logic without the index accessors (GetNth...), as a Slicer that lacks them."""

    def __init__(self, logic):
        self._logic = logic

    def LoadTerminologyFromFile(self, path):
        return self._logic.LoadTerminologyFromFile(path)

    def SerializeTerminologyEntry(self, entry):
        return self._logic.SerializeTerminologyEntry(entry)


def terminology_types(terminologies):
    return [[t.code, t.name, [round(c, 4) for c in t.color], t.entry] for t in layer.load_terminology(terminologies)]


def find_results(scene, reference_name):
    """The result nodes of a read-back scene, found by the names load_results gives them."""
    def by_name(name):
        node = scene.GetFirstNodeByName(name)
        if node is None:
            raise RuntimeError(f"{name}: not in the read-back scene")
        return node

    maps = {stem: by_name(f"{reference_name} {title}") for stem, title in layer.MAPS}
    return {"segmentation": by_name(f"{reference_name} glioma"), "maps": maps,
            "table": by_name(f"{reference_name} glioma results")}


# --- rendering ---------------------------------------------------------------------------------------------------------
def _window():
    window = vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(SIZE, SIZE)
    renderer = vtkRenderer()
    window.AddRenderer(renderer)
    interactor = vtkRenderWindowInteractor()
    interactor.SetRenderWindow(window)
    interactor.SetInteractorStyle(vtkInteractorStyleUser())
    return window, renderer, interactor


def _managers(app, factory_class, names, renderer):
    factory = factory_class.GetInstance()
    factory.SetMRMLApplicationLogic(app.app)
    for name in names:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, renderer)
    return group


def _pixels(window):
    """The rendered RGB pixels, row 0 at the bottom (VTK's convention)."""
    window.Render()
    grab = vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[:, :, :3].copy()


def render_slice(app, keep, name, orientation, background, labels, tumor_ras):
    """One slice view through ``tumor_ras``: (pixels, label value under each pixel), both row 0 at the bottom."""
    window, renderer, interactor = _window()
    renderer.GetActiveCamera().ParallelProjectionOn()
    group = _managers(app, slicer.vtkMRMLSliceViewDisplayableManagerFactory,
                      ["vtkMRMLSegmentationsDisplayableManager2D"], renderer)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app.app)
    logic.SetMRMLScene(app.scene)
    app.app.GetSliceLogics().AddItem(logic)
    node = logic.AddSliceNode(name)
    node.SetOrientation(orientation)
    group.SetMRMLDisplayableNode(node)
    logic.GetSliceCompositeNode().SetBackgroundVolumeID(background.GetID())
    logic.ResizeSliceNode(SIZE, SIZE)
    logic.FitSliceToBackground()
    node.JumpSliceByCentering(*tumor_ras)
    logic.SnapSliceOffsetToIJK()
    mapper = vtkImageMapper()
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    mapper.SetInputConnection(logic.GetImageDataConnection())
    actor = vtkActor2D()
    actor.SetMapper(mapper)
    back = vtkRenderer()  # the image in its own layer below, so the segment fill blends over it
    back.SetLayer(0)
    renderer.SetLayer(1)
    window.SetNumberOfLayers(2)
    window.AddRenderer(back)
    back.AddViewProp(actor)
    pixels = _pixels(window)
    keep += [window, renderer, interactor, group, logic, mapper, actor, back]
    # the label value under each pixel centre: XY -> RAS (slice node) -> IJK (label map), nearest voxel
    xy_to_ras = np.array([[node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    ras_to_ijk = vtk.vtkMatrix4x4()
    labels.GetRASToIJKMatrix(ras_to_ijk)
    ras_to_ijk = np.array([[ras_to_ijk.GetElement(r, c) for c in range(4)] for r in range(4)])
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    points = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5, np.zeros(xs.size), np.ones(xs.size)])
    ijk = np.rint((ras_to_ijk @ xy_to_ras @ points)[:3]).astype(int)
    array = slicer.util.arrayFromVolume(labels)  # k, j, i
    inside = np.all((ijk >= 0) & (ijk < np.array(array.shape[::-1])[:, None]), axis=0)
    under = np.zeros(xs.size, np.int16)
    under[inside] = array[ijk[2, inside], ijk[1, inside], ijk[0, inside]]
    return pixels, under.reshape(SIZE, SIZE)


def render_3d(app, keep, tumor_ras):
    window, renderer, interactor = _window()
    group = _managers(app, slicer.vtkMRMLThreeDViewDisplayableManagerFactory,
                      ["vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                       "vtkMRMLSegmentationsDisplayableManager3D"], renderer)
    logic = slicer.vtkMRMLViewLogic()
    logic.SetMRMLApplicationLogic(app.app)
    logic.SetMRMLScene(app.scene)
    app.app.GetViewLogics().AddItem(logic)
    view = logic.AddViewNode("1")
    view.SetBoxVisible(False)
    view.SetBackgroundColor(0.1, 0.1, 0.1)
    view.SetBackgroundColor2(0.1, 0.1, 0.1)
    group.SetMRMLDisplayableNode(view)
    renderer.ResetCamera()
    camera = renderer.GetActiveCamera()
    camera.Elevation(20)
    camera.Azimuth(30)
    renderer.ResetCamera()
    offset = np.array(tumor_ras) - np.array(camera.GetFocalPoint())  # centre the tumor
    camera.SetFocalPoint(*tumor_ras)
    camera.SetPosition(*(np.array(camera.GetPosition()) + offset))
    camera.Zoom(2.4)
    keep += [window, renderer, interactor, group, logic]
    return _pixels(window)


def screenshot(views, path):
    """axial | coronal | 3D side by side, the extension's screenshot."""
    from PIL import Image
    row = np.concatenate([views[name][::-1] for name in ("axial", "coronal", "threed")], axis=1)
    Image.fromarray(np.ascontiguousarray(row)).save(path, optimize=True)


def render_views(app, out_dir, result_dir, reference, screenshot_path):
    """Axial and coronal through the enhancing tumor, and 3D: <view>_rgb.npy, <view>_label.npy, the screenshot."""
    labels = layer.load_volume(app.layer, os.path.join(out_dir, "segmentation.nii.gz"), "check labels",
                               labelmap=True)
    labels.GetDisplayNode().SetVisibility(False)
    array = slicer.util.arrayFromVolume(labels)
    k, j, i = (int(np.median(axis)) for axis in np.nonzero(array == 4))  # through the enhancing tumor
    ijk_to_ras = np.array(matrix(labels))
    tumor_ras = (ijk_to_ras @ np.array([i, j, k, 1.0]))[:3]
    keep, views = [], {}
    for name, orientation in (("axial", "Axial"), ("coronal", "Coronal")):
        pixels, under_pixels = render_slice(app, keep, name, orientation, reference, labels, tumor_ras)
        views[name] = pixels
        np.save(os.path.join(result_dir, f"{name}_rgb.npy"), pixels[::-1])
        np.save(os.path.join(result_dir, f"{name}_label.npy"), under_pixels[::-1])
    app.scene.RemoveNode(labels)
    views["threed"] = render_3d(app, keep, tumor_ras)
    np.save(os.path.join(result_dir, "threed_rgb.npy"), views["threed"][::-1])
    if screenshot_path:
        screenshot(views, screenshot_path)


def main(case_dir, out_dir, result_dir, screenshot_path=None, render=True):
    os.makedirs(result_dir, exist_ok=True)
    app = Application()
    case = os.path.basename(os.path.normpath(case_dir))
    reference = layer.load_volume(app.layer, os.path.join(case_dir, f"{case}_t1ce.nii.gz"), f"{case}_t1ce")
    reference.GetDisplayNode().AutoWindowLevelOn()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(app.scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Phantom patient"), "Phantom study")
    sh.CreateItem(study, reference)
    result = layer.load_results(app.layer, out_dir, reference)
    loaded = facts(app, result, reference)

    # a second input under a parent transform: the outputs follow it
    moved = layer.load_volume(app.layer, os.path.join(case_dir, f"{case}_t1ce.nii.gz"), "moved_t1ce")
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 12.5)
    transform.SetMatrixTransformToParent(shift)
    moved.SetAndObserveTransformNodeID(transform.GetID())
    under = layer.load_results(app.layer, out_dir, moved)
    transformed = {"input": moved.GetTransformNodeID(), "segmentation": under["segmentation"].GetTransformNodeID(),
                   "maps": sorted({n.GetTransformNodeID() for n in under["maps"].values()})}
    transformID = transform.GetID()
    for node in [moved, under["segmentation"], under["table"], *under["maps"].values()]:
        sh.RemoveItem(sh.GetItemByDataNode(node), False, False)
        app.scene.RemoveNode(node)
    app.scene.RemoveNode(transform)

    nodes_before = app.scene.GetNumberOfNodes()
    try:  # a file that is no volume: a one-line error naming it, and no node left behind
        layer.load_map(app.layer, os.path.join(out_dir, "report.json"), "not a map")
        unreadable = {"error": None}
    except RuntimeError as exc:
        unreadable = {"error": str(exc)}
    unreadable["nodesAdded"] = app.scene.GetNumberOfNodes() - nodes_before
    # the maps are read without the volumes logic (whose AddArchetypeVolume computes an automatic window/level)
    no_volumes_logic = layer.SceneLogics(app.scene, None, app.logics["Segmentations"], app.logics["Terminologies"])
    bare = layer.load_map(no_volumes_logic, os.path.join(out_dir, "prob_et.nii.gz"), "without volumes logic")
    unreadable["withoutVolumesLogicMax"] = float(slicer.util.arrayFromVolume(bare).max())
    for node in (bare, bare.GetDisplayNode(), bare.GetStorageNode()):
        app.scene.RemoveNode(node)

    mrb = os.path.join(result_dir, "scene.mrb")
    if not app.scene.WriteToMRB(mrb):
        raise RuntimeError(f"{mrb}: could not be written")

    if render:
        render_views(app, out_dir, result_dir, reference, screenshot_path)

    fresh = Application()
    if not fresh.scene.ReadFromMRB(mrb):
        raise RuntimeError(f"{mrb}: could not be read back")
    fresh_reference = fresh.scene.GetFirstNodeByName(f"{case}_t1ce")
    reread = facts(fresh, find_results(fresh.scene, f"{case}_t1ce"), fresh_reference)
    with open(os.path.join(result_dir, "facts.json"), "w") as handle:
        json.dump({"types": terminology_types(app.logics["Terminologies"]),
                   "typesFromFile": terminology_types(OlderTerminologies(app.logics["Terminologies"])),
                   "loaded": loaded, "reread": reread, "transformed": transformed,
                   "transformID": transformID, "report": result["report"], "unreadable": unreadable}, handle,
                  indent=1)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    shot, render = None, "--no-render" not in arguments
    arguments = [a for a in arguments if a != "--no-render"]
    if "--screenshot" in arguments:
        index = arguments.index("--screenshot")
        shot = arguments[index + 1]
        del arguments[index:index + 2]
    main(*arguments, screenshot_path=shot, render=render)
