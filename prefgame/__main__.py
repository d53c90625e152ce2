import sys

from prefgame.cli import main

sys.exit(main())
