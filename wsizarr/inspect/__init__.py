"""Looking at a store: ``verify`` (checksums, plan, patches re-read from the slides),
``preview``/``overlay``/``write_report`` (pictures and the HTML report) and ``export``."""

from ._export import export
from ._preview import overlay, preview, write_report
from ._verify import VerifyReport, verify

__all__ = ["VerifyReport", "export", "overlay", "preview", "verify", "write_report"]
