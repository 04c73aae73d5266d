"""Imports every command module so that each registers itself on ``app``."""

from knowtune.cli import annotate  # noqa: F401
from knowtune.cli import curate  # noqa: F401
from knowtune.cli import data  # noqa: F401
from knowtune.cli import models  # noqa: F401
from knowtune.cli import world  # noqa: F401
from knowtune.cli import train  # noqa: F401
from knowtune.cli import evaluate  # noqa: F401
from knowtune.cli import study  # noqa: F401
from knowtune.cli import diff  # noqa: F401
