"""The 3D rendering of the report draws the tumor's surfaces from its bounding box only."""
import io
import os

import numpy as np
import pytest


def _render(labels):
    from GliomaAnalysisLib.reporting.render3d import render_tumor

    try:
        return render_tumor(labels, (1.0, 1.0, 1.0), size=160)
    except Exception as exc:  # no OpenGL (EGL) on this machine
        pytest.skip(f"offscreen rendering unavailable: {exc}")


def test_rendering_does_not_depend_on_where_the_tumor_sits_in_the_volume():
    from PIL import Image

    labels = np.zeros((24, 28, 26), np.uint8)
    labels[4:20, 5:22, 6:20] = 2
    labels[8:16, 9:18, 10:16] = 3
    labels[10:14, 11:15, 12:14] = 1
    small = np.asarray(Image.open(io.BytesIO(_render(labels))).convert("RGB"), int)
    padded = np.zeros((70, 60, 80), np.uint8)
    padded[30:54, 3:31, 50:76] = labels
    large = np.asarray(Image.open(io.BytesIO(_render(padded))).convert("RGB"), int)
    assert small.shape == (160, 160, 3)
    assert np.abs(small - large).max() <= 4  # the same picture: the camera frames the surfaces wherever they are
    yellow = (small[..., 0] > 150) & (small[..., 1] > 150) & (small[..., 2] < 100)
    assert yellow.sum() > 20 and (small.sum(-1) < 700).sum() > 1000  # the enhancing shell and the tumor are drawn


def test_the_older_vtk_surface_path_draws_the_same_tumor(monkeypatch):
    from PIL import Image

    from GliomaAnalysisLib.reporting import render3d

    labels = np.zeros((24, 28, 26), np.uint8)
    labels[4:20, 5:22, 6:20] = 2
    labels[8:16, 9:18, 10:16] = 3
    labels[10:14, 11:15, 12:14] = 1
    nets = np.asarray(Image.open(io.BytesIO(_render(labels))).convert("RGB"), int)
    modern = render3d._vtk

    def without_surface_nets():  # VTK before 9.3 (e.g. an older Slicer's): marching cubes + windowed sinc
        vtk, numpy_support = modern()
        vtk.vtkSurfaceNets3D = None
        return vtk, numpy_support

    monkeypatch.setattr(render3d, "_vtk", without_surface_nets)
    cubes = np.asarray(Image.open(io.BytesIO(_render(labels))).convert("RGB"), int)
    drawn = [(image.sum(-1) < 700) for image in (nets, cubes)]  # not the white background
    yellow = [((i[..., 0] > 150) & (i[..., 1] > 150) & (i[..., 2] < 100)).sum() for i in (nets, cubes)]
    assert min(yellow) > 20 and drawn[0].sum() > 1000
    assert (drawn[0] & drawn[1]).sum() / (drawn[0] | drawn[1]).sum() > 0.85  # the same silhouette, smoothed apart


def test_the_background_render_gives_the_same_picture_and_reports_failures():
    from GliomaAnalysisLib.reporting.render3d import RenderError, start_render

    labels = np.zeros((24, 28, 26), np.uint8)
    labels[4:20, 5:22, 6:20] = 2
    labels[8:16, 9:18, 10:16] = 3
    direct = _render(labels)
    assert start_render(labels, (1.0, 1.0, 1.0), size=160)() == direct  # byte-identical PNG from the child
    failing = start_render(np.zeros((4, 4), np.uint8), (1.0, 1.0, 1.0), size=160)  # 2D: the render raises
    with pytest.raises(RenderError, match=r"^\w+Error: "):
        failing()
    children = os.popen(f"ps --ppid {os.getpid()} -o stat=").read().split()
    assert "Z" not in "".join(children)  # every child was waited for


def test_inside_a_gui_process_the_render_runs_in_process(monkeypatch):
    import sys
    import types

    from GliomaAnalysisLib.reporting import render3d

    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setattr(render3d, "render_tumor", lambda *args: b"png from this process")
    monkeypatch.setattr(os, "fork", lambda: (_ for _ in ()).throw(AssertionError("forked a GUI process")))
    assert render3d.start_render(np.zeros((4, 4, 4), np.uint8), (1.0, 1.0, 1.0))() == b"png from this process"


def test_a_prestarted_child_draws_the_same_picture_and_leaves_when_nothing_is_asked():
    """prestart_render forks the child at the start of a run (VTK imported, OpenGL context open); start_render then
    sends it the scene: the same PNG as drawing in this process, failures reported the same way, and a child never
    sent a scene ends when its pipe closes (no process is left behind)."""
    from GliomaAnalysisLib.reporting import render3d

    labels = np.zeros((24, 28, 26), np.uint8)
    labels[4:20, 5:22, 6:20] = 2
    labels[8:16, 9:18, 10:16] = 3
    direct = _render(labels)
    assert render3d.prestart_render(size=160) and not render3d.prestart_render(size=160)  # one at a time
    assert render3d.start_render(labels, (1.0, 1.0, 1.0), size=160)() == direct
    assert render3d._child is None  # used once: the next view forks its own child
    assert render3d.prestart_render(size=160)
    failing = render3d.start_render(np.zeros((4, 4), np.uint8), (1.0, 1.0, 1.0), size=160)  # 2D: cannot be drawn
    with pytest.raises(render3d.RenderError, match=r"^\w+Error: "):
        failing()
    assert render3d.prestart_render(size=160)
    child, render3d._child = render3d._child, None
    child.stop()  # what the end of this process does: the pipe closes
    assert os.popen(f"ps --ppid {os.getpid()} -o pid=").read().split().count(str(child.pid)) == 0  # it left


def test_a_kept_child_draws_every_view_of_a_batch(monkeypatch):
    """render_child: one child draws every view inside the block in one window (no fork per view), answers
    collected in any order are each the picture of their own scene (byte-identical to a fresh window's), a
    failure does not stop it, and it ends with the block."""
    from GliomaAnalysisLib.reporting import render3d

    small = np.zeros((24, 28, 26), np.uint8)
    small[8:16, 9:18, 10:16] = 3
    large = np.zeros((72, 72, 72), np.uint8)  # its scene (> 64 KiB) fills the pipe: sends wait for the child
    large[4:68, 5:66, 6:64] = 2
    large[20:50, 20:50, 20:50] = 1
    direct = [_render(small), _render(large)]
    assert direct[0] != direct[1]
    with render3d.render_child(size=160) as started:
        assert started
        child = render3d._child
        monkeypatch.setattr(os, "fork", lambda: (_ for _ in ()).throw(AssertionError("forked a child per view")))
        views = [render3d.start_render(labels, (1.0, 1.0, 1.0), size=160)
                 for labels in (large, small, large, small)]
        failing = render3d.start_render(np.zeros((4, 4), np.uint8), (1.0, 1.0, 1.0), size=160)
        assert [views[3](), views[0](), views[2](), views[1]()] == [direct[0], direct[1], direct[1], direct[0]]
        with monkeypatch.context() as forked:  # a process forked from this one (a batch worker) does not use it
            forked.setattr(os, "getpid", lambda: child.owner + 1)
            assert render3d._own_child() is None
        with pytest.raises(render3d.RenderError, match=r"^\w+Error: "):
            failing()
        with pytest.raises(render3d.RenderError, match=r"^KeyError: "):
            child.draw({})()  # fails in the child
        assert render3d.start_render(large, (1.0, 1.0, 1.0), size=160)() == direct[1]  # still there
        monkeypatch.undo()
        assert render3d._child is child
    assert render3d._child is None and child.ended
    assert str(child.pid) not in os.popen(f"ps --ppid {os.getpid()} -o pid=").read().split()


def test_a_batch_whose_drawing_child_died_reports_that_view_and_draws_the_next_in_a_new_child():
    import signal

    from GliomaAnalysisLib.reporting import render3d

    labels = np.zeros((24, 28, 26), np.uint8)
    labels[8:16, 9:18, 10:16] = 3
    direct = _render(labels)
    with render3d.render_child(size=160):
        child = render3d._child
        os.kill(child.pid, signal.SIGKILL)
        with pytest.raises(render3d.RenderError, match="ended without a result"):
            render3d.start_render(labels, (1.0, 1.0, 1.0), size=160)()
        assert render3d.start_render(labels, (1.0, 1.0, 1.0), size=160)() == direct  # a child forked for it
        assert render3d._child is None and child.ended
    assert "Z" not in os.popen(f"ps --ppid {os.getpid()} -o stat=").read()  # every child was waited for


def test_ctrl_c_reaching_the_drawing_child_does_not_stop_its_views():
    """Ctrl-C (SIGINT) and SIGTERM reach the whole process group: the batch's drawing child ignores both (the
    batch completes the case it is writing, 3D view included) and leaves when its pipe closes."""
    import signal

    from GliomaAnalysisLib.reporting import render3d

    labels = np.zeros((24, 28, 26), np.uint8)
    labels[8:16, 9:18, 10:16] = 3
    direct = _render(labels)
    with render3d.render_child(size=160):
        child = render3d._child
        assert render3d.start_render(labels, (1.0, 1.0, 1.0), size=160)() == direct  # running
        os.kill(child.pid, signal.SIGINT)
        os.kill(child.pid, signal.SIGTERM)
        assert render3d.start_render(labels, (1.0, 1.0, 1.0), size=160)() == direct
        assert render3d._child is child
    assert render3d._child is None and child.ended
    assert str(child.pid) not in os.popen(f"ps --ppid {os.getpid()} -o pid=").read().split()
