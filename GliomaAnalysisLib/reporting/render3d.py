"""Offscreen 3D rendering of the tumor subregions (VTK), as PNG bytes.

Surfaces of NCR, ED and ET (SurfaceNets; discrete marching cubes and windowed-sinc smoothing before VTK 9.3) inside a
translucent brain surface.
Without a display on Linux, VTK's EGL render window is used (``VTK_DEFAULT_OPENGL_WINDOW``).
:func:`start_render` runs it in a child process on Linux, so that the rendering overlaps the writing of the other
outputs; :func:`prestart_render` starts that child at the beginning of a one-case run, so that VTK's import and the
OpenGL context are ready before the analysis ends, and :func:`render_child` keeps one child for every view of a batch.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import sys
import threading
from typing import BinaryIO, Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from .figures import LABEL_COLOURS

BRAIN_SURFACE_MM = 4.0
"""Sampling of the translucent brain surface drawn around the tumor."""


def _vtk():
    """The few VTK modules needed (importing all of ``vtk`` costs ~1.5 s)."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from types import SimpleNamespace

    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL render window factory)
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import VTK_UNSIGNED_CHAR
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules import vtkFiltersCore, vtkFiltersGeneral
    from vtkmodules.vtkFiltersCore import vtkPolyDataNormals, vtkWindowedSincPolyDataFilter
    from vtkmodules.vtkIOImage import vtkPNGWriter
    from vtkmodules.vtkRenderingCore import (vtkActor, vtkPolyDataMapper, vtkRenderer, vtkRenderWindow,
                                             vtkWindowToImageFilter)

    vtk = SimpleNamespace(VTK_UNSIGNED_CHAR=VTK_UNSIGNED_CHAR, vtkImageData=vtkImageData,
                          vtkPolyDataNormals=vtkPolyDataNormals,
                          vtkSurfaceNets3D=getattr(vtkFiltersCore, "vtkSurfaceNets3D", None),  # VTK >= 9.3
                          vtkDiscreteMarchingCubes=vtkFiltersGeneral.vtkDiscreteMarchingCubes,
                          vtkWindowedSincPolyDataFilter=vtkWindowedSincPolyDataFilter,
                          vtkPNGWriter=vtkPNGWriter, vtkActor=vtkActor,
                          vtkPolyDataMapper=vtkPolyDataMapper, vtkRenderer=vtkRenderer, vtkRenderWindow=vtkRenderWindow,
                          vtkWindowToImageFilter=vtkWindowToImageFilter)
    return vtk, numpy_support


def _image_data(vtk, numpy_support, volume: np.ndarray, spacing_zyx: Sequence[float],
                corner_zyx: Sequence[int] = (0, 0, 0)):
    """vtkImageData of volume (z, y, x) whose first voxel is voxel ``corner_zyx`` of the full grid."""
    image = vtk.vtkImageData()
    image.SetDimensions(volume.shape[2], volume.shape[1], volume.shape[0])
    image.SetSpacing(spacing_zyx[2], spacing_zyx[1], spacing_zyx[0])
    image.SetOrigin(*(float(c * s) for c, s in zip(reversed(corner_zyx), reversed(spacing_zyx))))
    array = numpy_support.numpy_to_vtk(np.ascontiguousarray(volume, dtype=np.uint8).ravel(), deep=True,
                                       array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(array)
    return image


def _surface(vtk, image, value: int, smooth: int = 16):
    """The smoothed surface of the voxels labelled ``value``, with normals for shading: SurfaceNets (VTK >= 9.3),
    on a BraTS case 0.05 s of CPU for the three tumor surfaces where discrete marching cubes + windowed-sinc
    smoothing + normals with consistency checks (the path kept for older VTK, e.g. an older Slicer's) took 0.34 s."""
    if vtk.vtkSurfaceNets3D is not None:
        surface = vtk.vtkSurfaceNets3D()
        surface.SetInputData(image)
        surface.SetLabel(0, value)
        surface.SetOutputMeshTypeToTriangles()
        surface.SetNumberOfIterations(smooth)
    else:
        cubes = vtk.vtkDiscreteMarchingCubes()
        cubes.SetInputData(image)
        cubes.SetValue(0, value)
        surface = vtk.vtkWindowedSincPolyDataFilter()
        surface.SetInputConnection(cubes.GetOutputPort())
        surface.SetNumberOfIterations(smooth)
        surface.SetPassBand(0.05)
        surface.NonManifoldSmoothingOn()
        surface.NormalizeCoordinatesOn()
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(surface.GetOutputPort())
    normals.SplittingOff()  # smooth shading; both filters orient their triangles consistently
    normals.ConsistencyOff()
    return normals


def render_scene(labels: np.ndarray, spacing_zyx: Sequence[float], brain: Optional[np.ndarray] = None) -> Dict:
    """What the 3D view draws, small enough to send to a child process: the labels (z, y, x, contiguous 0..3) of the
    tumor's bounding box with one voxel of margin (which closes the surfaces) and its corner, the brain mask sampled
    at about ``BRAIN_SURFACE_MM`` (context only: a quarter of the work of 2 mm) and the spacings (mm)."""
    box = []
    for axis in range(3):
        present = np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(0, int(present[0]) - 1), int(present[-1]) + 2) if present.size else slice(0, 0))
    scene = {"tumor": np.ascontiguousarray(labels[tuple(box)], dtype=np.uint8), "corner": [b.start for b in box],
             "spacing": [float(s) for s in spacing_zyx], "brain": None, "brain_spacing": None}
    if brain is not None and brain.any():
        step = max(1, int(round(BRAIN_SURFACE_MM / min(spacing_zyx))))
        scene["brain"] = np.ascontiguousarray(brain[::step, ::step, ::step], dtype=np.uint8)
        scene["brain_spacing"] = [float(s) * step for s in spacing_zyx]
    return scene


def render_tumor(labels: np.ndarray, spacing_zyx: Sequence[float], brain: Optional[np.ndarray] = None,
                 size: int = 480) -> bytes:
    """PNG bytes of a 3D view (from above and the front-left) of labels (z, y, x), contiguous 0..3."""
    return draw_scene(render_scene(labels, spacing_zyx, brain), size)


def new_window(vtk, size: int):
    """An offscreen render window of ``size`` x ``size`` pixels, its OpenGL context created."""
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(size, size)
    window.Initialize()
    return window


def draw_scene(scene: Dict, size: int = 480, window=None) -> bytes:
    """PNG bytes of a :func:`render_scene`, drawn in ``window`` (from :func:`new_window`; left open, without this
    scene, for the next: its OpenGL context and compiled shaders are reused) or in a new window closed after."""
    vtk, numpy_support = _vtk()
    keep = []  # a vtkAlgorithmOutput does not keep its producer alive: hold every pipeline stage here
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(1.0, 1.0, 1.0)
    if scene["brain"] is not None:
        brain_image = _image_data(vtk, numpy_support, scene["brain"], scene["brain_spacing"])
        actor = vtk.vtkActor()
        mapper = vtk.vtkPolyDataMapper()
        keep.append(_surface(vtk, brain_image, 1, smooth=20))
        mapper.SetInputConnection(keep[-1].GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(0.75, 0.75, 0.8)
        actor.GetProperty().SetOpacity(0.12)
        renderer.AddActor(actor)
    tumor = scene["tumor"]
    image = _image_data(vtk, numpy_support, tumor, scene["spacing"], scene["corner"])
    for value, colour in LABEL_COLOURS.items():
        if not np.any(tumor == value):
            continue
        mapper = vtk.vtkPolyDataMapper()
        keep.append(_surface(vtk, image, value))
        mapper.SetInputConnection(keep[-1].GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*colour)
        actor.GetProperty().SetOpacity(0.35 if value == 2 else 1.0)  # edema translucent around the core
        renderer.AddActor(actor)
    camera = renderer.GetActiveCamera()
    camera.SetViewUp(0, 0, 1)  # superior up (LPS: +z superior)
    camera.SetPosition(-1, -1.4, 0.8)  # from the right-anterior-superior side
    camera.SetFocalPoint(0, 0, 0)
    renderer.ResetCamera()
    owned = window is None
    window = new_window(vtk, size) if owned else window
    window.SetSize(size, size)
    window.AddRenderer(renderer)
    try:
        window.Render()
        grabber = vtk.vtkWindowToImageFilter()
        grabber.SetInput(window)
        grabber.ShouldRerenderOff()  # read the frame just drawn (by default it draws it again: 0.1 CPU-s)
        grabber.Update()
        writer = vtk.vtkPNGWriter()
        writer.WriteToMemoryOn()
        writer.SetInputConnection(grabber.GetOutputPort())
        writer.Write()
        return bytes(numpy_support.vtk_to_numpy(writer.GetResult()))
    finally:
        if owned:
            window.Finalize()
        else:
            window.RemoveRenderer(renderer)


GUI_MODULES = ("slicer", "qt", "PyQt5", "PySide2", "PySide6")
"""Modules whose presence means a GUI process, which is never forked."""


class RenderError(RuntimeError):
    """The rendering failed in the child process; the message is "<exception type>: <its message>"."""


def _forks_here() -> bool:
    """Whether the rendering may run in a forked child: on Linux, outside a GUI process."""
    return sys.platform.startswith("linux") and not any(name in sys.modules for name in GUI_MODULES)


class _RenderChild:
    """A forked child that draws the scenes sent to it, in order, each in an offscreen window it opened beforehand.

    Messages both ways are pickles behind an 8-byte length. One sender thread writes the scenes in the order they
    were given (the caller never blocks on the pipe) and alone closes the request pipe. ``keep``: the child draws
    every view until :meth:`stop` (a batch); else it draws one and leaves (a one-case run). Answers are read in order
    and kept until asked for, so views in flight together may be collected in any order. Only the process that
    started the child uses it (a process forked from it, e.g. a batch worker, starts its own)."""

    def __init__(self, size: int, keep: bool) -> None:
        self.keep = keep
        self.owner = os.getpid()
        request_read, request = os.pipe()
        self.replies, reply_write = os.pipe()
        try:
            self.pid = os.fork()
        except OSError:
            for fd in (request_read, request, self.replies, reply_write):
                os.close(fd)
            raise
        if self.pid == 0:
            try:
                # Ctrl-C reaches the whole process group: the child finishes the view under way and leaves when
                # its pipe closes (an interrupted batch still completes the case it is writing, 3D view included)
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                os.close(request)
                os.close(self.replies)
                _serve(request_read, reply_write, size, keep)
            finally:
                os._exit(1)  # never back into the parent's code
        os.close(request_read)
        os.close(reply_write)
        self.sent = self.next_answer = 0
        self.answers: Dict[int, Tuple[bool, object]] = {}
        self.closed = self.ended = False
        self.outbox: "queue.SimpleQueue[Optional[bytes]]" = queue.SimpleQueue()
        self.numbering = threading.Lock()  # a scene's number is its place in the outbox
        self.reading = threading.Lock()  # answers are read in order
        self.ending = threading.Lock()
        self.sender = threading.Thread(target=self._send_all, args=(request,), daemon=True)
        self.sender.start()

    def _send_all(self, request: int) -> None:
        """The sender thread: each scene of the outbox in turn, until None; then the request pipe is closed."""
        pipe = open(request, "wb")
        try:
            while (data := self.outbox.get()) is not None:
                pipe.write(len(data).to_bytes(8, "little") + data)
                pipe.flush()
        except OSError:  # the child is gone: the answers say so
            pass
        finally:
            with contextlib.suppress(OSError):  # the descriptor is closed even when the last flush fails
                pipe.close()

    def draw(self, scene: Dict) -> Callable[[], bytes]:
        """Send ``scene``; returns the wait for its PNG."""
        data = pickle.dumps(scene, protocol=pickle.HIGHEST_PROTOCOL)
        with self.numbering:
            number, self.sent = self.sent, self.sent + 1
            self.outbox.put(data)
        if not self.keep:
            self.close()
        return _once(lambda: _answer(self.answer(number)))

    def answer(self, number: int) -> Tuple[bool, object]:
        """The child's (ok, PNG or message) for scene ``number``, waiting for it."""
        with self.reading:
            while number not in self.answers and not self.ended:
                try:
                    data = _read_message(self.replies)
                except BaseException:  # e.g. an interrupt halfway through a message: the pipe is no longer readable
                    self.end()
                    raise
                if data is None:  # the child ended: no later answer will come
                    self.end()
                    break
                self.answers[self.next_answer] = pickle.loads(data)
                self.next_answer += 1
            if not self.keep:
                self.end()
            return self.answers.pop(number, (False, "the 3D rendering process ended without a result"))

    def close(self) -> None:
        """No more scenes: the child leaves once it has answered those it got."""
        with self.numbering:
            if not self.closed:
                self.closed = True
                self.outbox.put(None)

    def end(self) -> None:
        """No more scenes or answers: the reply pipe is closed (a child blocked on an unread answer fails to write it
        and leaves) and the child waited for."""
        self.close()
        with self.ending:
            if not self.ended:
                self.ended = True
                os.close(self.replies)
                os.waitpid(self.pid, 0)

    def stop(self) -> None:
        """End the child (answers not read yet are dropped)."""
        self.end()
        self.sender.join()


def _serve(requests: int, replies: int, size: int, keep: bool) -> None:
    """The child: open a window, then draw each scene that arrives into it and send back (True, PNG) or
    (False, "<exception type>: <message>"); keep: the window serves the next scene too (a fresh one after a
    failure), else it leaves after one. It leaves when the pipe closes, whatever happens (never returning into the
    parent's code)."""
    try:
        with open(requests, "rb") as pipe_in, open(replies, "wb") as pipe_out:
            window = _new_window_or_none(size)
            while (data := _read_message(pipe_in)) is not None:
                try:
                    reply = (True, draw_scene(pickle.loads(data), size, window))
                except BaseException as exc:  # noqa: BLE001  (reported to the parent)
                    reply = (False, f"{type(exc).__name__}: {str(exc)[:200]}")
                message = pickle.dumps(reply)
                pipe_out.write(len(message).to_bytes(8, "little") + message)
                pipe_out.flush()
                if not keep:
                    break
                if window is None or not reply[0]:
                    window = _new_window_or_none(size)
    finally:
        os._exit(0)


def _new_window_or_none(size: int):
    try:
        return new_window(_vtk()[0], size)
    except BaseException:  # noqa: BLE001  (draw_scene tries again and reports what fails)
        return None


def _read_message(source: "int | BinaryIO") -> Optional[bytes]:
    """One length-prefixed message from a pipe (file descriptor or binary file), or None at its end."""
    read = (lambda n: os.read(source, n)) if isinstance(source, int) else source.read
    parts, wanted, header = [], 8, True
    length = 0
    while wanted:
        chunk = read(wanted)
        if not chunk:
            return None
        parts.append(chunk)
        wanted -= len(chunk)
        if not wanted and header:
            length = int.from_bytes(b"".join(parts), "little")
            parts, wanted, header = [], length, False
    return b"".join(parts) if length else b""


def _answer(reply: Tuple[bool, object]) -> bytes:
    ok, value = reply
    if not ok:
        raise RenderError(str(value))
    return value  # type: ignore[return-value]


def _once(function: Callable[[], bytes]) -> Callable[[], bytes]:
    """``function`` called on the first call only; later calls give the same answer (or raise the same error)."""
    outcome: list = []

    def result() -> bytes:
        if not outcome:
            try:
                outcome.append((True, function()))
            except Exception as exc:  # noqa: BLE001
                outcome.append((False, exc))
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    return result


_child: Optional[_RenderChild] = None
"""The child :func:`prestart_render` started, until used (one-case run) or stopped (:func:`render_child`)."""


def _own_child() -> Optional[_RenderChild]:
    """``_child`` when this process started it (a forked process inherits the variable, not the child)."""
    return _child if _child is not None and _child.owner == os.getpid() else None


def prestart_render(size: int = 480, keep: bool = False) -> bool:
    """Fork the child that will draw the 3D view now, at the start of a run: it imports VTK and opens its offscreen
    OpenGL context (about 0.2 s) while the case is analysed, so that only drawing is left when the outputs are
    written. keep: it draws every later view of this process too (a batch; see :func:`render_child`), else only
    the next one. Returns whether it was started (Linux outside a GUI, one at a time). Call it before any thread
    starts (a fork copies the calling thread only); a child never sent a scene leaves when its pipe closes."""
    global _child
    if _own_child() is not None or not _forks_here():
        return False
    try:
        _child = _RenderChild(size, keep)
    except OSError:  # no process could be started: views are drawn as without it
        return False
    return True


@contextlib.contextmanager
def render_child(size: int = 480) -> Iterator[bool]:
    """Within the block, the 3D views of this process are drawn by one child started now (VTK imported and a
    window opened once, not per case: a batch saves about 0.15 s of CPU a case); it ends with the block. Yields
    whether the child was started (see :func:`prestart_render`)."""
    global _child
    started = prestart_render(size, keep=True)
    child = _child
    try:
        yield started
    finally:
        if started and child is not None:
            child.stop()
            if _child is child:
                _child = None


def start_render(labels: np.ndarray, spacing_zyx: Sequence[float], brain: Optional[np.ndarray] = None,
                 size: int = 480) -> Callable[[], bytes]:
    """Start :func:`render_tumor` and return a function that waits for its PNG bytes (raising what the rendering
    raised; from the child process as a :class:`RenderError`; every call gives the same answer).

    On Linux the rendering runs in a child process (:class:`_RenderChild`), so it overlaps the caller's work: the one
    :func:`prestart_render` started, else one forked now for this view; the scene goes there and the PNG comes back
    through pipes, never blocking the caller. Elsewhere (no fork; macOS's frameworks are not fork-safe), and inside a
    GUI process (``GUI_MODULES``: its windowing state must not be forked), it runs when its result is asked for."""
    global _child
    child = _own_child()
    if child is not None and child.closed:
        child = _child = None  # a kept child that died: views are drawn as if it had never been started
    if child is None:
        if not _forks_here():
            return lambda: render_tumor(labels, spacing_zyx, brain, size)
        child = _RenderChild(size, keep=False)  # forked now, for this view only
    elif not child.keep:
        _child = None
    try:
        return child.draw(render_scene(labels, spacing_zyx, brain))
    except Exception as exc:  # reported when the view is asked for, as a child's failure would be
        if not child.keep:
            child.stop()  # the child sees the end of its pipe and leaves without a reply
        message = f"{type(exc).__name__}: {str(exc)[:200]}"
        return _once(lambda: _answer((False, message)))
