"""File, folder and column names that more than one room reads or writes: each spelled once, here.

Changing one changes what is on disk: files written by earlier versions must keep loading.
"""

#: every gallery folder's description file (both kinds; its ``"kind"`` says which)
GALLERY_FILE = "gallery.json"
#: ``"kind"`` of a gallery folder: a search page's frozen old gallery, or a gallery in migration
STATIC_GALLERY, MIXED_GALLERY = "static", "mixed"
#: a gallery in migration's old vectors, and the folder its backfill writes
OLD_VECTORS_FILE, BACKFILL_DIR = "old.safetensors", "backfill"
#: the LanceDB folder the Ray engine backfills into, inside a gallery folder (unless given elsewhere)
LANCE_DIR = "lancedb"

#: column names read as captions, in order of preference (a table with several: the first wins)
CAPTION_COLUMNS = ("caption", "text", "captions", "sentence", "txt")
#: column names read as images, in order of preference
IMAGE_COLUMNS = ("image", "img", "jpg", "png", "webp")


def gallery_kind(meta: dict) -> str:
    """The kind of a ``gallery.json``: its ``"kind"``, or, in files written before kinds were recorded,
    the kind its keys show (a gallery in migration records its items' ``"modality"``)."""
    if "kind" in meta:
        return str(meta["kind"])
    return MIXED_GALLERY if "modality" in meta else STATIC_GALLERY
