"""Pipeline: one analysis from a Case to an AnalysisResult (models, post-processing, measures, memory guard)."""
