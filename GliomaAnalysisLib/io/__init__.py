"""Input: case folders, image and DICOM reading, modality names, geometry and label conventions."""
