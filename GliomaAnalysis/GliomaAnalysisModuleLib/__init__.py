"""Pure helpers of the GliomaAnalysis Slicer module (no slicer, qt or vtk imports: tested with pytest)."""
