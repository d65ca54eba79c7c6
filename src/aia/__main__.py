"""python -m aia"""

import sys

from aia.cli import main

sys.exit(main())
