import sys

from jaxalign.cli import main

sys.exit(main())
