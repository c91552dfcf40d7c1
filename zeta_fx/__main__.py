import sys

from zeta_fx.cli import main

sys.exit(main())
