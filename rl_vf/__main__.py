import sys

from rl_vf.cli import main

sys.exit(main())
