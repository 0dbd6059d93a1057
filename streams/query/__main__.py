"""``python -m tocsin.streams.query``: the query child (see child.child_main)."""

import sys

from tocsin.streams.query.child import child_main

sys.exit(child_main())
