"""The measurements as a DICOM Structured Report (TID 1500 Measurement Report, Comprehensive 3D SR, highdicom).

One volumetric measurement group per segment of the DICOM SEG (necrotic / non-enhancing core, edema, enhancing
tumor), each holding that subregion's volume in mL and referencing its SEG segment and the source series. Written
beside ``segmentation.seg.dcm`` by ``--dicom-seg``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Sequence, Union

from .._version import __version__

DICOM_SR_FILE = "measurements.sr.dcm"
SEGMENT_VOLUME_KEYS = {"Necrotic / non-enhancing tumor core": "ncr", "Peritumoral edema": "ed",
                       "Enhancing tumor": "et"}
"""SEG segment label -> key of ``volumes_ml`` (the labels written by io.dicom_io.write_dicom_seg)."""


def write_measurement_sr(seg_path: Union[str, "os.PathLike[str]"], source_files: Sequence[str],
                         volumes_ml: Dict[str, float], path: Union[str, "os.PathLike[str]"]) -> Path:
    """Write a TID 1500 report of the subregion volumes in ``volumes_ml`` referencing the SEG at ``seg_path``."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    seg = pydicom.dcmread(seg_path)
    source = pydicom.dcmread(source_files[0], stop_before_pixels=True)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="GliomaAnalysis", manufacturer_name="GliomaAnalysis",
            model_name="GliomaAnalysis segmentation"))
    algorithm = hd.sr.AlgorithmIdentification(name="GliomaAnalysis", version=__version__)
    groups = []
    for segment in seg.SegmentSequence:
        key = SEGMENT_VOLUME_KEYS[str(segment.SegmentLabel)]
        number = int(segment.SegmentNumber)
        volume = hd.sr.Measurement(name=Code("118565006", "SCT", "Volume"), value=float(volumes_ml[key]),
                                   unit=Code("mL", "UCUM", "milliliter"), algorithm_id=algorithm)
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{segment.SegmentLabel}"),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(source.SeriesInstanceUID)),
            finding_type=hd.sr.CodedConcept.from_dataset(segment.SegmentedPropertyTypeCodeSequence[0]),
            finding_category=hd.sr.CodedConcept.from_dataset(segment.SegmentedPropertyCategoryCodeSequence[0]),
            algorithm_id=algorithm, measurements=[volume]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=Code("241615005", "SCT", "Magnetic resonance imaging of brain"),
        imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg], content=report, series_instance_uid=hd.UID(), series_number=101,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="GliomaAnalysis",
        is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = "GliomaAnalysis measurements (research use only)"
    path = Path(path)
    sr.save_as(path, enforce_file_format=True)
    return path
