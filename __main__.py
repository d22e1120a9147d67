import sys

from devicefabric.cli import main

sys.exit(main())
