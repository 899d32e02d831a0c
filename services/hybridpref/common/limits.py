"""Alias of ``hybridpref_client.core.limits``: the module lives in the SDK distribution
(hybridpref-client), which the services depend on, so vendors get it without the services."""

import sys

from hybridpref_client.core import limits as _module

sys.modules[__name__] = _module
