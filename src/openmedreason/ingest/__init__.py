"""Ingest: articles, OA packages and record files into Panel records."""

from openmedreason.reasons import reason

#: shared by every ingest source (JATS folders, OA packages, record files)
IMAGE_MISSING = reason("ingest.image_missing", "the figure's image file could not be found")
