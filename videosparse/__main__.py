"""`python -m videosparse` = the `videosparse` command."""

import sys

from videosparse.cli import main

sys.exit(main())
