"""Stage 3, the Zarr v3 patch store: its manifest and tables (``_manifest``), the shard byte
format (``_shards``), the patch codecs (``_codecs``), creating, filling, resuming and opening it
(``_store``), reading patches and shards (``_reader``), the writer lock (``_lock``) and
migrating older stores (``_migrate``). Where a store lives (local, zip, S3) is ``.._locations``."""

from ._manifest import QUALITY_MEASURES, SCHEMA_VERSION
from ._migrate import migrate
from ._store import store_info

__all__ = ["QUALITY_MEASURES", "SCHEMA_VERSION", "migrate", "store_info"]
