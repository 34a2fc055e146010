"""Preprocessing: the common working grid and its exact inverse, crops, clinical (native-space) input, registration."""
