"""napari dock widgets: thin Qt views over the core (all logic is callable without Qt)."""
