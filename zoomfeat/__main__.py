import sys

from zoomfeat.cli import main

sys.exit(main())
