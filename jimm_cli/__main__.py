import sys

from jimm_cli import main

sys.exit(main())
