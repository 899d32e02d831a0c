"""Alias of ``hybridpref_client.core.convert``: the module lives in the SDK distribution
(hybridpref-client), which the services depend on, so vendors get it without the services."""

import sys

from hybridpref_client.core import convert as _module

sys.modules[__name__] = _module
