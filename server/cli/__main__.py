"""`python -m server.cli`: the `fluxserve` command."""

import sys

from server.cli import main

sys.exit(main())
