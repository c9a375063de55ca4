"""``python -m monai_qrvae.cli``: the ``qrvae`` command."""

import sys

from monai_qrvae.cli.main import main

sys.exit(main())
