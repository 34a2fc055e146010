"""Training code that produces every weight file GliomaAnalysisLib ships. Imports the library, never the reverse."""
